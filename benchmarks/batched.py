"""Seeds of one configuration: one after another, as one batch, or split over processes.

What the refit (``pipelines/hpo.py``) and cross-budget cells (``pipelines/cross_budget.py``)
do: K seeds of the same structure and optimiser settings. Side by side in one run, at the
budgets ``20K`` and ``60K`` of the default structure (``model`` section) on the default data
(the real a50 tier when built, else a synthetic one of its shape), K = 3 and 8 seeds, trained

* (a) one after another with ``training.trainer.train`` on 1 torch thread,
* (b) one after another on 2 torch threads,
* (c) as one batch with ``training.batched.train_batch`` on 2 torch threads,
* (d) by two 1-thread processes, each training its half of the seeds one after another.

Each mode runs in fresh spawned processes; the clock covers training only (data loading and
imports happen before a barrier). Early stopping is off (patience = epochs), so every member
trains the same number of epochs and the modes do the same work. Reported: models per second
and the ratio to (a).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import data_spec, describe_data, load_data, machine

NAME = "batched"
TITLE = "Seeds of one config: sequential (1 or 2 threads), one batch, two processes"
BUDGETS = ("20K", "60K")
KS = (3, 8)
MODES = {
    "a": "sequential, 1 thread",
    "b": "sequential, 2 threads",
    "c": "one batch (train_batch), 2 threads",
    "d": "2 processes x 1 thread",
}


def _configs(budget: str, spec: dict[str, Any], data, seeds: list[int], epochs: int):
    from common import config
    from training.budget import ModelParams
    from training.trainer import TrainConfig

    model = config.load(ModelParams, "model").solve(budget, data.n_features, spec["context_len"])
    if model is None:
        raise RuntimeError(f"the default structure has no width at {budget}")
    base = config.load(TrainConfig, "train")
    trains = [TrainConfig.from_dict(base.to_dict() | {"seed": s, "max_epochs": epochs, "patience": epochs,
                                                      "progress": False, "device": "cpu"}) for s in seeds]
    return model, trains


def _worker(conn, barrier, budget: str, spec: dict[str, Any], seeds: list[int], epochs: int, threads: int,
            batched: bool) -> None:
    try:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
        import torch

        torch.set_num_threads(threads)
        from training.batched import train_batch
        from training.trainer import train

        data = load_data(spec)
        model, trains = _configs(budget, spec, data, seeds, epochs)
        barrier.wait(timeout=600)
        start = time.time()
        if batched:
            results = train_batch([model] * len(trains), trains, data)
        else:
            results = [train(model, t, data) for t in trains]
        end = time.time()
        conn.send(("ok", {"start": start, "end": end, "n_params": results[0].n_params,
                          "ok": sum(r.ok for r in results),
                          "auc": [r.val_metrics.get("val/auc") for r in results]}))
    except BaseException as exc:  # report, never hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_mode(mode: str, budget: str, spec: dict[str, Any], k: int, epochs: int) -> dict[str, Any]:
    """Wall seconds of mode ``mode`` training ``k`` seeds (training only), and what it trained."""
    seeds = list(range(1, k + 1))
    if mode == "d":
        jobs = [(seeds[: (k + 1) // 2], 1, False), (seeds[(k + 1) // 2:], 1, False)]
    else:
        jobs = [(seeds, 1 if mode == "a" else 2, mode == "c")]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    procs, pipes = [], []
    for part, threads, batched in jobs:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child, barrier, budget, spec, part, epochs, threads, batched))
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    outs = []
    for parent in pipes:
        status, value = parent.recv()
        if status != "ok":
            raise RuntimeError(f"benchmark child failed: {value}")
        outs.append(value)
    for proc in procs:
        proc.join()
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {"wall_s": wall, "models_per_s": k / wall, "n_params": outs[0]["n_params"],
            "ok": sum(o["ok"] for o in outs), "auc": [a for o in outs for a in o["auc"]]}


def _loadavg() -> str:
    """``cat /proc/loadavg`` (the machine is shared: its load is part of the result)."""
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.is_file() else "n/a"


def run(quick: bool = False) -> str:
    epochs = 2 if quick else 4
    where = machine()  # its load average is the one at the start
    spec = data_spec("a50", 1)
    data = load_data(spec)
    load_before = _loadavg()
    rows, notes = [], []
    for k in KS:  # K=3 at every budget first: on a busy machine the cheap rows come back first
        for budget in BUDGETS:
            results = {}
            for m in MODES:
                results[m] = run_mode(m, budget, spec, k, epochs)
                print(f"batched: {budget} K={k} ({m}) {results[m]['wall_s']:.1f} s "
                      f"(load {_loadavg().split()[0]})", file=sys.stderr, flush=True)
            base = results["a"]["models_per_s"]
            for m, label in MODES.items():
                r = results[m]
                rows.append(f"| {budget} ({r['n_params']:,}) | {k} | ({m}) {label} | {r['wall_s']:.1f} | "
                            f"{r['models_per_s']:.3f} | {r['models_per_s'] / base:.2f}x |")
                if r["ok"] != k:
                    notes.append(f"{budget} K={k} mode {m}: only {r['ok']}/{k} members finished ok")
            # same seeds, same data order: the batch reproduces the sequential members
            gap = max(abs(x - y) for x, y in zip(results["a"]["auc"], results["c"]["auc"], strict=True)
                      if x is not None and y is not None)
            notes.append(f"{budget} K={k}: largest |val AUC (a) - (c)| over the seeds {gap:.4f}")
    load_after = _loadavg()
    header = [
        f"Machine: {where}. **Shared with other work** (other engineers' tests ran beside it): "
        f"`cat /proc/loadavg` before `{load_before}`, after `{load_after}`.",
        f"Data: {describe_data(spec, data)}. Default structure (`model` section), width solved per "
        f"budget; {epochs} epochs, no early stopping (patience = epochs), `train` defaults otherwise"
        f"{' (`--quick`)' if quick else ''}. Clock = training only, after a barrier; each mode in fresh "
        "spawned processes.",
        "",
        "| budget (params) | K seeds | mode | wall s | models/s | vs (a) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    return "\n".join(header + rows + [""] + [f"- {n}" for n in notes]) + "\n"
