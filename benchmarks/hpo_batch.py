"""HPO trials per hour with ``hpo.batch_trials`` off (1) and on (K), on the default profile.

The same study (engine arm of :mod:`benchmarks.hpo_engine`: forced extremes, coverage-steered
TPE, the default search space, pruner and ``train`` settings) run twice per seed on the same
data and trial count, with fresh SQLite Optuna and MLflow stores each time: ``batch_trials: 1``
and ``batch_trials: K``, each with the default profile's workers (``hpo.workers: 0`` = one
1-thread process per core, at most ``hpo.trials``). Reported: COMPLETE trials per hour over the
study's wall time, the wasted fraction, the best useful val AUC at equal trial counts (the first
N finished trials), and the share of trials that were trained inside a batch (groups need equal
structure and batch size, which the searched space makes rare). The order of the two arms
alternates per seed so that load drift hits both alike.

``python -m benchmarks hpo_batch --quick`` (a20, 20K, 12 trials, K = 4, 1 seed: a few minutes on
2 cores); ``python -m benchmarks.hpo_batch --trials 20 --seeds 3 --batch 4`` for the record.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from benchmarks._common import data_spec, describe_data, load_data, machine
from benchmarks.hpo_engine import _fmt, _mean, run_arm

NAME = "hpo_batch"
TITLE = "HPO trials per hour: batch_trials off vs on (default profile, CPU)"


def default_workers(n_trials: int) -> int:
    from common import config
    from training.search.config import HpoConfig

    requested = config.load(HpoConfig, "hpo").workers
    return requested or max(1, min(n_trials, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1))


def measure(n_trials: int, seeds: int, batch: int, epochs: int | None, tier: str = "a20", budget: str = "20K",
            workers: int | None = None) -> dict[str, Any]:
    spec = data_spec(tier, 1)
    data = load_data(spec)
    workers = workers or default_workers(n_trials)
    started, runs = time.perf_counter(), []
    for seed in range(seeds):
        for k in ((1, batch) if seed % 2 == 0 else (batch, 1)):
            out = run_arm("engine", seed, data, n_trials, epochs, budget, batch_trials=k, workers=workers)
            out["k"] = k
            print(f"hpo_batch: seed {seed} batch_trials {k}: {out['wall_s']:.0f} s, wasted {out['wasted']:.1%}, "
                  f"batched {out['batched_share']:.0%}", file=sys.stderr, flush=True)
            runs.append(out)
    return {"runs": runs, "data": describe_data(spec, data), "budget": budget, "n_trials": n_trials, "seeds": seeds,
            "batch": batch, "workers": workers, "epochs": epochs, "minutes": (time.perf_counter() - started) / 60,
            "machine": machine()}


def render(result: dict[str, Any], quick: bool = False) -> str:
    n, batch = result["n_trials"], result["batch"]
    lines = [
        f"Machine: {result['machine']}. Data: {result['data']}.",
        f"Budget {result['budget']}, {n} COMPLETE trials per study, {result['seeds']} seed(s), "
        f"{result['workers']} worker(s) x 1 thread, max epochs {result['epochs'] or 'from params.yaml'}; "
        f"engine arm (forced + coverage-steered TPE); {result['minutes']:.0f} min in all.",
        "",
        f"| batch_trials | COMPLETE trials / hour | wall s | wasted fraction | best val AUC @{n} | trials trained in a batch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for k in (1, batch):
        rs = [r for r in result["runs"] if r["k"] == k]
        wall = _mean([r["wall_s"] for r in rs])
        summary[k] = {"per_hour": _mean([n / r["wall_s"] * 3600 for r in rs]), "wasted": _mean([r["wasted"] for r in rs]),
                      "best": _mean([r["best"][n] for r in rs]),
                      "batched": _mean([r["batched_share"] for r in rs])}
        s = summary[k]
        lines.append(f"| {k} | {s['per_hour']:.0f} | {wall:.0f} | {s['wasted']:.1%} | {_fmt(s['best'])} "
                     f"| {s['batched']:.0%} |")
    off, on = summary[1], summary[batch]
    lines += [
        "",
        f"- batch_trials {batch} vs 1: {on['per_hour'] / off['per_hour']:.2f}x the trials per hour; wasted "
        f"{on['wasted']:.1%} vs {off['wasted']:.1%} (target: no worse): "
        f"**{'met' if on['wasted'] <= off['wasted'] + 1e-12 else 'NOT met'}**; best val AUC {_fmt(on['best'])} vs "
        f"{_fmt(off['best'])} (target: no worse; few trials: seed noise dominates): "
        f"**{'met' if on['best'] >= off['best'] - 1e-12 else 'NOT met'}**",
        "- `hpo.batch_trials` stays 1 in params.yaml unless this table shows a gain on the machine that runs it.",
    ]
    if quick:
        lines += ["", "_Quick run (`--quick`): one seed; for the record "
                  "`python -m benchmarks.hpo_batch --trials 20 --seeds 3 --batch 4`._"]
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str:
    if quick:
        return render(measure(n_trials=12, seeds=1, batch=4, epochs=None), quick=True)
    return render(measure(n_trials=20, seeds=3, batch=4, epochs=None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hpo_batch", description=TITLE)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="batch_trials of the 'on' arm")
    parser.add_argument("--epochs", type=int, default=None, help="cap train.max_epochs (default: params)")
    parser.add_argument("--tier", default="a20")
    parser.add_argument("--budget", default="20K")
    parser.add_argument("--workers", type=int, default=None, help="default: hpo.workers (0 = one per core)")
    args = parser.parse_args(argv)
    print(render(measure(args.trials, args.seeds, args.batch, args.epochs, args.tier, args.budget, args.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
