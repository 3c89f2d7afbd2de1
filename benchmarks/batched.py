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


def _capped(data, max_train: int | None):
    """``data`` with at most ``max_train`` training windows (the last ones): a shorter epoch, same shapes."""
    import dataclasses

    ends = data.split_ends["train"]
    if not max_train or len(ends) <= max_train:
        return data
    return dataclasses.replace(data, split_ends={**data.split_ends, "train": ends[-max_train:]})


def _worker(conn, barrier, budget: str, spec: dict[str, Any], seeds: list[int], epochs: int, threads: int,
            batched: bool | str, max_train: int | None = None) -> None:
    """Train ``seeds`` after a barrier; ``batched``: True/"batch" = one ``train_batch``, False/"single"
    = ``trainer.train`` one after another, "ref" = the naive reference loop of benchmarks.throughput."""
    try:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
        import torch

        torch.set_num_threads(threads)
        from benchmarks._common import peak_rss_mb, rss_mb
        from benchmarks.throughput import reference_trial
        from training.batched import train_batch
        from training.trainer import train

        kind = {True: "batch", False: "single"}.get(batched, batched)
        data = _capped(load_data(spec), max_train)
        model, trains = _configs(budget, spec, data, seeds, epochs)
        base_rss = rss_mb()
        barrier.wait(timeout=600)
        start = time.time()
        if kind == "batch":
            results = train_batch([model] * len(trains), trains, data)
            aucs, ok = [r.val_metrics.get("val/auc") for r in results], sum(r.ok for r in results)
        elif kind == "single":
            results = [train(model, t, data) for t in trains]
            aucs, ok = [r.val_metrics.get("val/auc") for r in results], sum(r.ok for r in results)
        else:
            outs = [reference_trial(model, data, epochs, t.batch_size, t.lr, seed=t.seed) for t in trains]
            aucs, ok = [o["val_auc"] for o in outs], len(outs)
        end = time.time()
        from training.budget import count_params

        conn.send(("ok", {"start": start, "end": end, "n_params": count_params(model), "ok": ok, "auc": aucs,
                          "n_train": len(data.split_ends["train"]), "peak_rss_mb": peak_rss_mb(),
                          "rss_over_base_mb": max(0.0, peak_rss_mb() - base_rss)}))
    except BaseException as exc:  # report, never hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_mode(mode: str, budget: str, spec: dict[str, Any], k: int, epochs: int, *,
             max_train: int | None = None) -> dict[str, Any]:
    """Wall seconds of mode ``mode`` training ``k`` seeds (training only), and what it trained.
    Modes a-d as in the module doc, plus ``r`` (the naive reference loop, 2 threads) and ``e``
    (two 1-thread processes, each one ``train_batch`` of its half)."""
    seeds = list(range(1, k + 1))
    halves = [seeds[: (k + 1) // 2], seeds[(k + 1) // 2:]]
    if mode in ("d", "e"):
        jobs = [(part, 1, "batch" if mode == "e" else "single") for part in halves if part]
    else:
        jobs = [(seeds, 1 if mode == "a" else 2, {"c": "batch", "r": "ref"}.get(mode, "single"))]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    procs, pipes = [], []
    for part, threads, kind in jobs:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child, barrier, budget, spec, part, epochs, threads, kind, max_train))
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
            "model_samples_per_s": k * outs[0]["n_train"] * epochs / wall, "n_train": outs[0]["n_train"],
            "peak_rss_mb": sum(o["peak_rss_mb"] for o in outs),
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
