"""How many CPUs this process may use, and pinning a process to a number of torch threads.

One home for both process pools (the HPO workers of ``training.search.workers`` and the
one-thread training processes of ``training.parallel``), so they read the same CPU count and
set the same thread knobs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cpus() -> list[int]:
    """The CPUs this process may run on (honours taskset/cgroup cpusets, unlike ``os.cpu_count``)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def pin_threads(threads: int, cpus: Sequence[int] | None = None) -> None:
    """This process's BLAS and torch on ``threads`` intra-op threads and one inter-op thread, on
    ``cpus`` when given. Call before torch runs anything: the inter-op pool is fixed after."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    if cpus is not None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, cpus)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op parallel work
        torch.set_num_interop_threads(1)
