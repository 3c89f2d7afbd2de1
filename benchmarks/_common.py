"""Shared helpers of the benchmarks: the data they run on, isolated child processes, the machine."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

from common import paths


def threads() -> int:
    """Torch threads for the timed runs: ``TIERHPO_BENCH_THREADS``, else every core. On a shared,
    busy machine one thread per process gives far steadier ratios than OpenMP threads that
    wait on each other."""
    value = os.environ.get("TIERHPO_BENCH_THREADS")
    return int(value) if value else (os.cpu_count() or 1)


def data_spec(tier: str = "a50", horizon: int = 1) -> dict[str, Any]:
    """The real tier when ``tierhpo tiers`` has built it, else a synthetic tier of the same shape."""
    from training.dataset import load_data_config

    data = load_data_config()
    if paths.tier_path(data.symbol, tier).is_file():
        return {"kind": "tier", "symbol": data.symbol, "tier": tier, "horizon": horizon,
                "context_len": data.context_len}
    return {"kind": "synthetic", "n_days": 4774, "n_features": 55, "context_len": data.context_len,
            "horizon": horizon, "tier": tier}


def load_data(spec: dict[str, Any]):
    if spec["kind"] == "tier":
        from training.dataset import load_tier

        return load_tier(spec["symbol"], spec["tier"], spec["horizon"], spec["context_len"])
    from training.synthetic import synthetic_tier

    return synthetic_tier(n_days=spec["n_days"], n_features=spec["n_features"], context_len=spec["context_len"],
                          horizon=spec["horizon"], tier=f"synthetic-{spec['tier']}")


def describe_data(spec: dict[str, Any], data) -> str:
    sizes = ", ".join(f"{len(data.split_ends[s])} {s}" for s in ("train", "val", "test"))
    if spec["kind"] == "tier":
        what = f"real tier `{spec['symbol']}_{spec['tier']}` h{spec['horizon']}"
    else:
        what = f"synthetic stand-in for `{spec['tier']}` (run `tierhpo tiers --tier {spec['tier']}` for the real one)"
    return f"{what}: {data.n_features} features, context {data.context_len} days, windows {sizes}"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"load average {load:.1f} at start")


def rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(conn, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> None:
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException as exc:  # report, never hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def in_child(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Run ``fn(**kwargs)`` in a fresh (spawned) process: clean allocator, own peak RSS."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, kwargs))
    proc.start()
    child.close()
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark child failed: {value}")
    return value


def matmul_peak_gflops(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained fp32 GFLOP/s of an ``n x n`` matrix product on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):  # warm-up
        torch.mm(a, b, out=out)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def peak_child(threads: int) -> dict[str, Any]:
    return {"gflops": max(matmul_peak_gflops(threads, n) for n in (1024, 2048))}
