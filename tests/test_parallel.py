"""training.parallel: independent jobs on one-thread processes, results in job order, errors carried back."""

from __future__ import annotations

import pytest
import torch

from training.parallel import OneThreadPool, pool_size


def test_pool_size_is_one_per_core_and_never_more_than_the_jobs():
    assert pool_size(0, 10, cores=2) == 2
    assert pool_size(0, 1, cores=2) == 1
    assert pool_size(3, 2, cores=8) == 2
    assert pool_size(0, 0, cores=2) == 1
    with pytest.raises(ValueError, match="workers must be >= 0"):
        pool_size(-1, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_on_one_thread_and_come_back_in_job_order(workers):
    before = torch.get_num_threads()
    jobs = [(n,) for n in (5, 1, 3)]
    with OneThreadPool(workers, len(jobs)) as pool:
        got = list(pool.map(_threads_and_square, jobs, cost=[1.0, 9.0, 3.0]))
    assert got == [(1, 25), (1, 1), (1, 9)]  # job order, not start order; one thread everywhere
    assert torch.get_num_threads() == before  # the in-process path restores this process's threads


def test_a_failing_job_is_raised_here_with_its_message():
    with pytest.raises(ValueError, match="invalid literal"), OneThreadPool(2) as pool:
        list(pool.map(int, [("3",), ("x",), ("4",)]))


def _threads_and_square(n: int) -> tuple[int, int]:
    return torch.get_num_threads(), n * n


def test_a_worker_that_dies_is_one_clear_error():
    from common.errors import TierHpoError

    with pytest.raises(TierHpoError, match="a training process died"), OneThreadPool(2) as pool:
        list(pool.map(_die, [(1,), (2,)]))


def _die(n: int) -> None:
    import os

    os._exit(9)


def test_the_pool_starts_its_processes_before_any_job_and_runs_them_on_one_thread():
    import multiprocessing as mp

    before = len(mp.active_children())
    with OneThreadPool(2, preload=("training.batched",)) as pool:
        assert pool.size == 2 and len(mp.active_children()) - before == 2  # started at once, idle
        assert list(pool.map(_threads_and_square, [(2,), (3,)])) == [(1, 4), (1, 9)]
    with OneThreadPool(1) as alone:  # one worker: no process, the jobs run here
        assert list(alone.map(_threads_and_square, [(4,)])) == [(1, 16)]
