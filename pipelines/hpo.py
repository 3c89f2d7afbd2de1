"""``tierhpo hpo --tier a50 --budget 20M --horizon 1``: one two-phase Optuna study, resumable.

Reads params sections ``hpo`` (search space, trials, forced extremes, coverage, pruner, storage),
``model``/``train`` (structure and trainer defaults the space overrides), ``metrics``
(degeneracy thresholds) and ``data``. The tier must have passed ``tierhpo validate``; its data
version (the validated files' md5) is part of the study name, so new data starts a new study.

Running the same command again resumes the study: only the trials missing to reach ``--trials``
COMPLETE trials run. At the end it writes, atomically, ``paths.study_dir(tier, budget, horizon)``:
``best.json``, ``model.pt``, ``metrics.json`` and ``trials.csv`` (docs/architecture.md), then
retrains the best configuration with ``hpo.refit_seeds`` fresh seeds (``training.seeds.fresh_seeds``
of ``hpo.seed``, never equal to it: the seeds the transfer stages' diagonal cells reuse), all in one batch (training/batched.py): ``refit.json`` (per-seed and
seed-ensemble val metrics), ``refit.pt`` (``{"seed_<s>": state_dict}``) and
``val_predictions.parquet`` (date, y, seed_<s>). The test split is not read here.
Ctrl-C or SIGTERM: the running trial is closed (MLflow run KILLED) and re-queued, exit 130.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from common import config, paths
from common.errors import TierHpoError

app = typer.Typer(add_completion=False)


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def tier_version(symbol: str, tier: str) -> str:
    """The md5 of the validated tier parquet and split file (what the study trains on)."""
    from training.validation_record import ensure_validated

    summary = ensure_validated(symbol, tier)
    return f"{summary['dataset_md5'][:12]}-{summary['splits_md5'][:12]}"


def build_spec(tier: str, budget: str, horizon: int, *, forced: int | None = None, seed: int | None = None,
               trials: int | None = None, threads: int | None = None, max_memory_gb: float | None = None):
    """Load the params and the validated tier; return ``(spec, data, hpo_config)``.

    A budget whose training state alone exceeds the memory limit is refused here, before the
    data is loaded (training.memory)."""
    from evaluation.metrics import MetricsParams
    from training.budget import ModelParams
    from training.dataset import check_horizon, check_tier, load_data_config, load_tier
    from training.memory import check_budget
    from training.search.config import HpoConfig
    from training.search.study import StudySpec
    from training.trainer import TrainConfig

    data_cfg = load_data_config()
    check_tier(tier, data_cfg.tiers)
    check_horizon(horizon, data_cfg.horizons)
    hpo = config.load(HpoConfig, "hpo", trials=trials, forced=forced, seed=seed, threads=threads)
    model = config.load(ModelParams, "model")
    train = config.load(TrainConfig, "train", max_memory_gb=max_memory_gb)
    check_budget(budget, train.max_memory_gb, train.device)
    metrics = config.load(MetricsParams, "metrics")
    data = load_tier(data_cfg.symbol, tier, horizon, data_cfg.context_len, require_validated=True)
    spec = StudySpec.from_params(hpo, tier=tier, budget=budget, horizon=horizon, data=data,
                                 tier_version=tier_version(data_cfg.symbol, tier), model=model, train=train,
                                 metrics=metrics, symbol=data_cfg.symbol)
    return spec, data, hpo


@app.command()
def main(
    tier: Annotated[str, typer.Option(help="Feature tier: a20, a50 or a100.")],
    budget: Annotated[str, typer.Option(help="Parameter budget, e.g. 200K, 2M, 20M (real count within 10 %).")],
    horizon: Annotated[int, typer.Option(help="Label horizon in days (one of data.horizons).")],
    trials: Annotated[int | None, typer.Option(help="COMPLETE trials the study must reach (default: hpo.trials).")] = None,
    forced: Annotated[int | None, typer.Option(help="Forced extreme trials run first (default: hpo.forced).")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL, e.g. postgresql://USER@HOST/DB (default: SQLite in the repo's stores/).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the samplers and the trainer (default: hpo.seed).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; 0 = all cores (default: hpo.threads).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="One line per trial, no progress bars.")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes on this machine, each with cores // N threads; 0 = one per core "
             "(default: hpo.workers; docs/distributed.md).")] = None,
    join: Annotated[bool, typer.Option(
        "--join", help="Only join a study another machine started; stop if params or data differ.")] = False,
    worker_offset: Annotated[int | None, typer.Option(
        help="First worker index (seeds TPE); give each machine its own range. Default: 0, or a "
             "per-host value with --join.")] = None,
    max_memory_gb: Annotated[float | None, typer.Option(
        help="Memory limit of one training run in GB (default: train.max_memory_gb, else 80% of the "
             "device); larger budgets and trials are refused (docs/limits.md).")] = None,
) -> None:
    """Two-phase Optuna search (forced extremes, then coverage-aware TPE) for one study."""
    import optuna
    import torch

    from common.redact import redact
    from training.search.results import write_outputs
    from training.search.study import WorkerSettings, run_study

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if trials is not None and trials < 1:
        raise TierHpoError(f"--trials must be >= 1, got {trials}")
    if workers is not None and workers < 0:
        raise TierHpoError(f"--workers must be >= 0 (0 = one per core), got {workers}")
    _warm_up_workers(workers, trials, join)
    spec, data, hpo = build_spec(tier, budget, horizon, forced=forced, seed=seed, trials=trials, threads=threads,
                                 max_memory_gb=max_memory_gb)
    workers = resolve_workers(hpo.workers if workers is None else workers, hpo.trials)
    storage_url = storage or paths.optuna_storage_url()
    settings = WorkerSettings(storage=hpo.storage, log_every_s=hpo.log_every_s, batch_trials=hpo.batch_trials,
                              progress=spec.train.progress and not quiet and workers == 1)
    if workers > 1 or join:
        from training.search.workers import describe, run_workers

        offset = worker_offset if worker_offset is not None else (host_offset() if join else 0)
        result = run_workers(spec, data, hpo.trials, storage_url, n_workers=workers, settings=settings, join=join,
                             index_offset=offset, threads_per_worker=threads or None, echo=_echo)
        for line in describe(result.report):
            _echo(line)
    else:
        torch.set_num_threads(hpo.threads or os.cpu_count() or 1)
        _echo(f"study {spec.study_name}: {hpo.trials} trials ({spec.forced} forced), storage {redact(storage_url)}, "
              f"{torch.get_num_threads()} threads")
        result = run_study(spec, data, hpo.trials, storage_url, settings=settings, echo=_echo)
    out = paths.study_dir(spec.tier, spec.budget, spec.horizon)
    write_outputs(result, out)
    if hpo.refit_seeds:
        from training.seeds import fresh_seeds

        refit = refit_best(result.best, data, fresh_seeds(spec.seed, hpo.refit_seeds), ece_bins=spec.metrics.ece_bins)
        write_refit(refit, out)
        _echo(f"refit {len(refit['seeds'])} fresh seeds: val/auc "
              + ", ".join(f"{r['val/auc']:.4f}" for r in refit["members"])
              + f"; seed ensemble {refit['ensemble']['val/auc']:.4f}")
    m = result.metrics
    _echo(f"best trial {result.best['trial_number']}: val/auc {m['val/auc']:.4f} "
          f"({result.best['n_params']:,} parameters); {m['hpo/n_complete']} complete, {m['hpo/n_pruned']} pruned, "
          f"{m['hpo/n_failed']} failed; wasted {m['hpo/wasted_fraction']:.1%}; coverage {m['hpo/coverage']:.2f}")
    _echo(f"wrote {_relative(out)}/{{best.json,model.pt,metrics.json,trials.csv,refit.*,val_predictions.parquet}}; "
          f"MLflow parent run {result.parent_run_id}")


def _warm_up_workers(workers: int | None, trials: int | None, join: bool) -> None:
    """Start the workers' forkserver before the set-up below when this study will have workers
    (its imports overlap the parent's; about 5 s of each study's start on 2 cores)."""
    from training.search.config import HpoConfig
    from training.search.workers import warm_up

    hpo = config.load(HpoConfig, "hpo", trials=trials)
    if join or resolve_workers(hpo.workers if workers is None else workers, hpo.trials) > 1:
        warm_up()


def resolve_workers(requested: int, trials: int, cores: int | None = None) -> int:
    """Worker processes for a study: ``requested``, or for 0 one per available core, at most
    ``trials`` (a worker beyond the trial target would only start and stop). With one worker per
    core each gets ``cores // workers`` = 1 torch thread (training.search.workers.plan_workers):
    on one small model that beats two threads several times over (BENCHMARKS.md)."""
    if requested < 0:
        raise TierHpoError(f"workers must be >= 0 (0 = one per core), got {requested}")
    if requested:
        return requested
    if cores is None:
        from common.threads import available_cpus

        cores = len(available_cpus())
    return max(1, min(cores, trials))


def refit_best(best: dict, data, seeds: list[int], *, ece_bins: int) -> dict:
    """Retrain ``best``'s model and train config with each of ``seeds``, as one batch; train/val only."""
    import dataclasses

    import numpy as np

    from evaluation.metrics import classification_metrics
    from training.batched import train_batch
    from training.model import ModelConfig
    from training.trainer import TrainConfig

    if best.get("model_config") is None or best.get("train_config") is None:
        raise TierHpoError("best.json has no model_config/train_config to refit")
    model_cfg = ModelConfig.from_dict(best["model_config"])
    base = TrainConfig.from_dict(best["train_config"])
    if base.seed in seeds:
        raise TierHpoError(f"refit seed {base.seed} is the study's own seed")
    configs = [dataclasses.replace(base, seed=s, progress=False) for s in seeds]
    results = train_batch([model_cfg] * len(seeds), configs, data, ece_bins=ece_bins)
    failed = [f"seed {s}: {r.reason}" for s, r in zip(seeds, results, strict=True) if not r.ok]
    if failed:
        raise TierHpoError(f"refit failed ({'; '.join(failed)})")
    preds = np.stack([r.val_pred for r in results])
    ensemble = classification_metrics(data.labels_of("val"), preds.mean(0), "val", data.base_rate, ece_bins)
    return {
        "seeds": seeds, "study_seed": base.seed, "trial_number": best.get("trial_number"),
        "model_config": model_cfg.to_dict(), "train_config": base.to_dict() | {"seed": None},
        "members": [{"seed": s, "status": r.status, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                     **r.val_metrics} for s, r in zip(seeds, results, strict=True)],
        "ensemble": ensemble,  # mean probability of the seeds
        "val/auc_seed_sd": float(np.std([r.val_metrics["val/auc"] for r in results], ddof=1)) if len(seeds) > 1 else 0.0,
        "train_seconds": max(r.train_seconds for r in results),
        "_states": {f"seed_{s}": r.state_dict for s, r in zip(seeds, results, strict=True)},
        "_val": {"date": data.dates[data.split_ends["val"]], "y": data.labels_of("val"),
                 **{f"seed_{s}": r.val_pred for s, r in zip(seeds, results, strict=True)}},
    }


def write_refit(refit: dict, out: Path) -> None:
    """refit.pt and val_predictions.parquet, then refit.json (each atomic)."""
    import pandas as pd
    import torch

    from common import atomic

    atomic.write_with(out / "refit.pt", lambda p: torch.save(refit["_states"], p))
    atomic.write_with(out / "val_predictions.parquet", lambda p: pd.DataFrame(refit["_val"]).to_parquet(p, index=False))
    atomic.write_json(out / "refit.json", {k: v for k, v in refit.items() if not k.startswith("_")})


def host_offset() -> int:
    """A first worker index of its own for each joining machine (TPE seeds on worker index), so two
    machines do not propose the same points; stable across reruns on the same host."""
    import socket
    import zlib

    return 1000 + zlib.crc32(socket.gethostname().encode()) % 100_000 * 16


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":  # pragma: no cover
    app()
    sys.exit(0)
