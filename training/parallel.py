"""Independent training jobs on one-thread processes, so both cores of a small machine are busy.

One small model on two torch threads runs barely faster than on one (issue 14: 11.5 ms vs
12.7 ms per 20K step), so a stage with several independent trainings (the cells of the transfer
stages) gets nearly twice the throughput from two one-thread processes. Every job trains on
**one thread wherever it runs**, in a worker process or in this one (``workers = 1``), so its
result does not depend on the pool size or on the machine's core count: reruns are
bit-identical on the CPU.

Jobs are handed out longest first (by the caller's cost estimate), the classic LPT schedule,
and their results come back in job order. A job that raises stops the pool and re-raises here;
nothing is written by the workers themselves. ``concurrent.futures`` rather than a hand-made
pool: it already carries exceptions back and cancels what has not started.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from common.errors import TierHpoError
from common.threads import available_cpus, pin_threads


def pool_size(requested: int, n_jobs: int, cores: int | None = None) -> int:
    """Worker processes for ``n_jobs`` jobs: ``requested``, or for 0 one per core this process may
    use (taskset/cgroup cpusets included); at most ``n_jobs``."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per core), got {requested}")
    return max(1, min(requested or (cores or len(available_cpus())), n_jobs))


def _one_thread(preload: tuple[str, ...] = ()) -> None:
    import importlib

    pin_threads(1)
    for module in preload:
        importlib.import_module(module)


@contextlib.contextmanager
def one_thread_here() -> Iterator[None]:
    """This process's torch on one intra-op thread for the duration (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OneThreadPool:
    """``workers`` one-thread processes (as :func:`pool_size` resolves it for ``n_jobs``), started
    at once, so that their start-up (an interpreter, torch and ``preload``: about 3 s each) runs
    while the caller still prepares the jobs. One worker = no process: the jobs run here."""

    def __init__(self, workers: int, n_jobs: int = 1 << 30, preload: tuple[str, ...] = ()) -> None:
        self.size = pool_size(workers, n_jobs)
        self._pool: ProcessPoolExecutor | None = None
        if self.size > 1:
            self._pool = ProcessPoolExecutor(max_workers=self.size, mp_context=mp.get_context("spawn"),
                                             initializer=_one_thread, initargs=(tuple(preload),))
            for _ in range(self.size):  # each submit with no idle worker spawns one (spawn context)
                self._pool.submit(int)

    def __enter__(self) -> OneThreadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple], cost: Sequence[float] | None = None) -> Iterator[Any]:
        """``fn(*job)`` for every job, each on one torch thread; yields the results in job order.
        ``fn`` and the jobs must pickle (a module-level function and plain data). ``cost``: an
        estimate per job, used only for the order in which jobs start (longest first)."""
        if self._pool is None or len(jobs) < 2:
            with one_thread_here():
                for job in jobs:
                    yield fn(*job)
            return
        pool = self._pool
        order = sorted(range(len(jobs)), key=lambda i: -(cost[i] if cost is not None else 0.0))
        futures: dict[int, Future] = {}
        try:
            for i in order:
                futures[i] = pool.submit(fn, *jobs[i])
            for i in range(len(jobs)):
                yield futures[i].result()
        except BrokenProcessPool:
            pool.shutdown(wait=True, cancel_futures=True)
            raise TierHpoError("a training process died (killed, or out of memory); nothing was written: "
                               "free memory or set the stage's workers to 1, then run the stage again") from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
