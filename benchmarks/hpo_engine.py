"""The HPO engine against plain TPE and random search, and its tracking overhead.

Three arms, each a full study through the engine's worker loop with real SQLite Optuna and MLflow
stores (fresh per study), on the same data, budget, search space, pruner and trial count:

* ``engine``: forced extremes + coverage-steered TPE + budget repair + duplicate prevention;
* ``tpe``: Optuna's ``TPESampler`` (seeded, Optuna 5 defaults), no forced trials, no steering;
* ``random``: Optuna's ``RandomSampler``.

Infeasible architectures reach the objective only in the two baselines (they have no repair);
there they are recorded as ``wasted=infeasible`` and cost no training.

Per arm, over seeds: wasted fraction (by reason), best useful val AUC after 10 / 20 / all trials
(degenerate and duplicate trials excluded, as the engine's best-trial rule does), epochs trained,
and the tracking overhead: seconds inside MLflow and Optuna-storage calls over the worker's wall
time. Arms are interleaved per seed so that machine load drifts alike over all three.

``python -m benchmarks hpo_engine [--quick]`` (the runner), or
``python -m benchmarks.hpo_engine --trials 20 --seeds 3 --epochs 12`` for a chosen size.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import data_spec, describe_data, load_data, machine

NAME = "hpo_engine"
TITLE = "HPO engine vs plain TPE vs random search (CPU)"
ARMS = ("engine", "tpe", "random")
CHECKPOINTS = (10, 20)


def study_spec(arm: str, seed: int, data: Any, epochs: int | None, budget: str | None):
    from common import config
    from evaluation.metrics import MetricsParams
    from training.budget import ModelParams
    from training.search.config import HpoConfig
    from training.search.study import StudySpec
    from training.trainer import TrainConfig

    hpo = config.load(HpoConfig, "hpo", seed=seed)
    train = config.load(TrainConfig, "train")
    train = dataclasses.replace(train, progress=False, **({"max_epochs": epochs,
                                                            "patience": min(train.patience, epochs)} if epochs else {}))
    spec = StudySpec.from_params(
        hpo, tier=data.tier or "a50", budget=budget or hpo.budgets[0], horizon=data.horizon, data=data,
        tier_version=f"benchmark-{data.tier}", model=config.load(ModelParams, "model"), train=train,
        metrics=config.load(MetricsParams, "metrics"),
    )
    if arm != "engine":
        spec = dataclasses.replace(spec, sampler=arm, forced=0)
    return spec, hpo


def run_arm(arm: str, seed: int, data: Any, n_trials: int, epochs: int | None, budget: str | None, *,
            batch_trials: int = 1, workers: int = 1) -> dict[str, Any]:
    """One study; ``workers`` > 1 runs it with that many 1-thread processes (``run_workers``), and
    ``batch_trials`` is ``hpo.batch_trials`` (benchmarks/hpo_batch.py compares both)."""
    import optuna
    from mlflow.tracking import MlflowClient

    from training.search import waste
    from training.search.study import WorkerSettings, run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, hpo = study_spec(arm, seed, data, epochs, budget)
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        # Stores exist in steady state: their one-time table creation is not a per-study cost.
        MlflowClient(tracking_uri).search_experiments()
        optuna.storages.RDBStorage(storage)
        settings = WorkerSettings(storage=hpo.storage, log_every_s=hpo.log_every_s, tracking_uri=tracking_uri,
                                  batch_trials=batch_trials)
        if workers > 1:
            from training.search.workers import run_workers

            result = run_workers(spec, data, n_trials, storage, n_workers=workers, settings=settings, plots=False,
                                 echo=lambda line: None)
            report = _merged(result.report)
        else:
            report = run_worker(spec, data, n_trials, storage, settings=settings)
        trials = optuna.load_study(study_name=spec.study_name, storage=storage).get_trials()
    finished = sorted(waste.counted(trials), key=lambda t: t.number)
    aucs = [(t.user_attrs.get("metrics") or {}).get("val/auc")
            if t.state == optuna.trial.TrialState.COMPLETE and waste.reason(t) is None else None for t in finished]
    summary = waste.summarize(trials)

    def best_at(k: int) -> float:
        useful = [a for a in aucs[:k] if a is not None and math.isfinite(a)]
        return max(useful) if useful else math.nan

    return {
        "arm": arm, "seed": seed, "n_finished": len(finished),
        "wasted": summary["wasted_fraction"], "by_reason": summary["count"],
        "best": {k: best_at(k) for k in (*CHECKPOINTS, n_trials, len(finished))},
        "best_all": best_at(len(finished)),
        "epochs": sum(int((t.user_attrs.get("info") or {}).get("epochs") or 0) for t in finished),
        "batched_share": sum(((t.user_attrs.get("info") or {}).get("batched") or 1) > 1 for t in finished)
        / max(1, len(finished)),
        "wall_s": report.wall_s, "train_s": report.train_s, "tracking_s": report.tracking_s,
        "storage_s": report.storage_s, "sampling_s": report.sampling_s,
    }


def _merged(workers_report: Any) -> Any:
    """The per-worker engine reports of ``run_workers`` as one (overheads summed, the parent's wall time)."""
    from training.search.worker import WorkerReport

    parts = [r for e in workers_report.exits for r in e.reports]
    return WorkerReport(outcomes=[o for r in parts for o in r.outcomes], wall_s=workers_report.wall_s,
                        **{f: sum(getattr(r, f) for r in parts) for f in ("train_s", "tracking_s", "storage_s",
                                                                            "sampling_s")})


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def _fmt(value: float, spec: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def measure(n_trials: int, seeds: int, epochs: int | None, budget: str | None = None) -> dict[str, Any]:
    spec = data_spec()
    data = load_data(spec)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for seed in range(seeds):
        order = ARMS[seed % 3:] + ARMS[:seed % 3]  # rotate, so no arm always runs first
        for arm in order:
            runs.append(run_arm(arm, seed, data, n_trials, epochs, budget))
    example, hpo = study_spec("engine", 0, data, epochs, budget)
    return {"runs": runs, "data": describe_data(spec, data), "budget": example.budget,
            "epochs": example.train.max_epochs, "space": list(example.space.names), "pruner": example.pruner.kind,
            "forced": example.forced, "n_trials": n_trials, "seeds": seeds,
            "minutes": (time.perf_counter() - started) / 60, "machine": machine()}


def render(result: dict[str, Any], quick: bool = False) -> str:
    from training.search.waste import REASONS

    runs, n = result["runs"], result["n_trials"]
    ks = [k for k in CHECKPOINTS if k < n] + ["all"]
    per_arm = {arm: [r for r in runs if r["arm"] == arm] for arm in ARMS}
    lines = [
        f"Machine: {result['machine']}. Data: {result['data']}.",
        f"Budget {result['budget']}, {n} COMPLETE trials per study, {result['seeds']} seeds, max {result['epochs']} "
        f"epochs, pruner {result['pruner']}, space {', '.join(result['space'])}; engine arm: {result['forced']} "
        f"forced + coverage-steered TPE. Fresh SQLite Optuna + MLflow stores per study; "
        f"{result['minutes']:.0f} min in all.",
        "",
        "| arm | wasted fraction | wasted by reason | " + " | ".join(f"best val AUC @{k}" for k in ks)
        + " | epochs | tracking+storage overhead |",
        "|---|---|---|" + "---|" * len(ks) + "---|---|",
    ]
    summary = {}
    for arm, rs in per_arm.items():
        wasted = _mean([r["wasted"] for r in rs])
        reasons = {reason: sum(r["by_reason"][reason] for r in rs) for reason in REASONS}
        shown = ", ".join(f"{k} {v}" for k, v in reasons.items() if v) or "none"
        bests = [_mean([r["best"].get(k if k != "all" else r["n_finished"]) for r in rs]) for k in ks]
        overhead = _mean([(r["tracking_s"] + r["storage_s"]) / r["wall_s"] for r in rs])
        epochs = _mean([r["epochs"] for r in rs])
        summary[arm] = {"wasted": wasted, "best_all": _mean([r["best_all"] for r in rs]), "overhead": overhead}
        lines.append(f"| {arm} | {wasted:.1%} | {shown} | " + " | ".join(_fmt(b) for b in bests)
                     + f" | {epochs:.0f} | {overhead:.1%} |")
    lines += ["", "Per seed, best useful val AUC over all trials: " + "; ".join(
        f"{arm} " + ", ".join(_fmt(r["best_all"]) for r in rs) for arm, rs in per_arm.items()) + "."]
    e, t = summary["engine"], summary["tpe"]
    engine_runs = per_arm["engine"]
    tracking = _mean([r["tracking_s"] / r["wall_s"] for r in engine_runs])
    storage = _mean([r["storage_s"] / r["wall_s"] for r in engine_runs])
    sampling = _mean([r["sampling_s"] / r["wall_s"] for r in engine_runs])
    lines += [
        "",
        "Targets (issue 4):",
        f"- wasted fraction of the engine {e['wasted']:.1%} (target < 5%): **{'met' if e['wasted'] < 0.05 else 'NOT met'}**",
        f"- best val AUC, engine {_fmt(e['best_all'])} vs plain TPE {_fmt(t['best_all'])} (mean over seeds; target: "
        f"no worse): **{'met' if e['best_all'] >= t['best_all'] - 1e-12 else 'NOT met'}**",
        f"- tracking overhead with the study storage, engine arm: {e['overhead']:.1%} of the worker's wall time "
        f"(MLflow {tracking:.1%}, Optuna storage {storage:.1%}; sampler {sampling:.1%} not counted) "
        f"(target < 3%): **{'met' if e['overhead'] < 0.03 else 'NOT met'}**",
    ]
    if quick or n < 20:
        lines += ["", f"_Small run ({n} trials, {result['seeds']} seeds, {result['epochs']} epochs): with this few "
                  "trials seed-to-seed noise dominates the AUC comparison. For the record: "
                  "`python -m benchmarks.hpo_engine --trials 20 --seeds 3`._"]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    if quick:
        return render(measure(n_trials=6, seeds=2, epochs=3), quick=True)
    return render(measure(n_trials=12, seeds=3, epochs=None))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.__main__ import DEFAULT_OUTPUT, replace_section
    from common import atomic

    parser = argparse.ArgumentParser(prog="python -m benchmarks.hpo_engine", description=TITLE)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="cap train.max_epochs (default: params)")
    parser.add_argument("--budget", default=None, help="default: the first of hpo.budgets")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args(argv)
    body = render(measure(args.trials, args.seeds, args.epochs, args.budget))
    if args.no_write:
        print(body)
        return 0
    text = DEFAULT_OUTPUT.read_text() if DEFAULT_OUTPUT.exists() else ""
    atomic.write_text(DEFAULT_OUTPUT, replace_section(text, NAME, TITLE, body))
    print(f"wrote the {NAME} section of {DEFAULT_OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
