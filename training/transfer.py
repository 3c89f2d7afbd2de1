"""Hyperparameter transfer between cells of the grid: the pure parts shared by the transfer stages.

``tierhpo cross-budget`` (one tier: each budget's best hyperparameters at every other budget) and
``tierhpo cross-tier`` (one budget: each tier's best hyperparameters on every other tier) both
build a matrix of :class:`Cell` s (source = whose hyperparameters, target = where they are
trained; :func:`plan_cells`), train every feasible cell with fresh seeds in one batch
(:func:`train_cells`) and judge each off-diagonal cell against the target's diagonal by Welch's
t-test (:func:`summarise`). No stage imports another: both import from here and from
``training.transfer_run`` (outputs and the MLflow run).

Seeds and the diagonal. A source study's cells are trained with ``training.seeds.fresh_seeds`` of
its seed, the derivation the HPO refit uses too. So the diagonal cell (the study's own
configuration on its own data) asks for seeds that ``refit.json`` already holds: those are read
from there (:func:`reusable_refit`; the same ``train_batch`` call on the same config, data and
seed gives bit-identical metrics on the CPU), and only the seeds beyond ``hpo.refit_seeds`` are
trained. The diagonal still never uses the study's own seed (winner's curse).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from common import config, paths, store_init
from common.errors import TierHpoError
from training.seeds import fresh_seeds
from training.study_record import METRIC, Study


@dataclass
class TransferConfig:
    """What both ``params.yaml`` sections ``cross_budget`` and ``cross_tier`` hold (each stage adds its axis list)."""

    SECTION: ClassVar[str] = "transfer"
    seeds: int = 3  # fresh seeds per cell (never the study's own), trained as one batch
    alpha: float = 0.05  # level of the two-sided Welch t-test of a cell against the diagonal
    workers: int = 0  # one-thread processes training cells side by side; 0 = one per core

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise TierHpoError(f"{self.SECTION}.workers must be >= 0 (0 = one per core), got {self.workers}")
        if self.seeds < 2:
            raise TierHpoError(f"{self.SECTION}.seeds must be >= 2 (the t-test needs a spread), got {self.seeds}")
        if not 0.0 < self.alpha < 1.0:
            raise TierHpoError(f"{self.SECTION}.alpha must be in (0, 1), got {self.alpha}")


def solver_rules() -> dict[str, Any]:
    """The budget solver's tolerance and minimum head width, from the ``model`` section (as the HPO used them)."""
    from training.budget import ModelParams

    params = config.load_params()
    model = config.build(ModelParams, params["model"], where="model") if params.get("model") else ModelParams()
    return {"tolerance": model.budget_tolerance, "min_head_dim": model.min_head_dim}


@dataclass
class Cell:
    source: str  # whose hyperparameters (a budget or a tier)
    target: str  # where they are trained (a budget or a tier)
    model_config: Any | None  # training.model.ModelConfig, None = infeasible
    n_params: int | None
    seeds: list[int]  # fresh seeds, never the source study's own
    est_seconds_per_run: float | None = None
    val_auc: dict[int, float] = field(default_factory=dict)  # seed -> val/auc (filled by training)
    reason: str | None = None  # why an infeasible cell is infeasible
    from_refit: dict[int, float] = field(default_factory=dict)  # diagonal: seed -> val/auc read from refit.json

    @property
    def feasible(self) -> bool:
        return self.model_config is not None

    @property
    def to_train(self) -> list[int]:
        return [s for s in self.seeds if s not in self.from_refit] if self.feasible else []


def reusable_refit(study: Study) -> dict[int, float]:
    """seed -> val/auc of the study's refit members (``refit.json``), when that refit retrained
    the study's own best trial: the same model config and the same train config but the seed.
    Empty without a refit (``hpo.refit_seeds: 0``) or when it describes another configuration."""
    from training.model import ModelConfig
    from training.trainer import TrainConfig

    refit = study.refit_record()
    if not refit or refit.get("trial_number") != study.best.get("trial_number"):
        return {}

    def train(raw: dict[str, Any]) -> Any:  # the refit records its train config with seed None
        return dataclasses.replace(TrainConfig.from_dict({**raw, "seed": 0}), progress=False)

    try:
        same = (ModelConfig.from_dict(refit["model_config"]) == study.model_config()
                and train(refit["train_config"]) == train(study.best["train_config"]))
    except (KeyError, TypeError, TierHpoError):
        return {}
    if not same:
        return {}
    return {int(m["seed"]): float(m[METRIC]) for m in refit.get("members", []) if METRIC in m}


def infeasible_reason(arch: Any, budget: str, n_features: int, context_len: int, rules: dict[str, Any]) -> str:
    """Why ``solve`` found no width for ``arch`` at ``budget`` with ``n_features`` inputs."""
    if arch.patch_len > context_len:
        return f"patch_len {arch.patch_len} > context_len {context_len}"
    return (f"no d_model (a multiple of n_heads={arch.n_heads}, head width >= {rules['min_head_dim']}) puts "
            f"n_layers={arch.n_layers} d_ff_ratio={arch.d_ff_ratio:g} patch_len={arch.patch_len} with "
            f"{n_features} input features within {rules['tolerance']:.0%} of {budget}")


def plan_cells(studies: dict[str, Study], n_seeds: int, rules: dict[str, Any],
               target_of: Callable[[str, Study], tuple[str, int, int]]) -> list[Cell]:
    """Every (source, target) cell with its solved config, seeds and estimated cost; trains nothing.

    ``studies``: key (budget or tier) -> its study. ``target_of(target, source_study)`` gives the
    ``(budget, n_features, context_len)`` the source's structure is re-solved for off the diagonal;
    the diagonal keeps the study's own configuration and takes what its refit already trained."""
    from training.budget import count_params, solve

    durations = {k: recorded_trial_seconds(s) for k, s in studies.items()}
    cells = []
    for source, study in studies.items():
        arch, src_cfg = architecture_of(study), study.model_config()
        seeds = fresh_seeds(study.train_config().seed, n_seeds)
        refit = reusable_refit(study)
        for target in studies:
            reason, from_refit = None, {}
            if target == source:
                model_cfg = src_cfg
                from_refit = {s: refit[s] for s in seeds if s in refit}
            else:
                budget, n_features, context_len = target_of(target, study)
                model_cfg = solve(arch, budget, n_features, context_len, dropout=src_cfg.dropout, **rules)
                if model_cfg is None:
                    reason = infeasible_reason(arch, budget, n_features, context_len, rules)
            n_params = count_params(model_cfg) if model_cfg is not None else None
            cells.append(Cell(source, target, model_cfg, n_params, list(seeds), durations[target], reason=reason,
                              from_refit=from_refit))
    return cells


def architecture_of(study: Study):
    """The searched structure of the study's best model (what is kept when the budget or tier changes)."""
    from training.budget import Architecture

    return Architecture.of(study.model_config(), study.best["params"].get("d_ff_ratio"))


def recorded_trial_seconds(study: Study) -> float | None:
    """Median wall time of the study's COMPLETE trials (``trials.csv``, else its finished MLflow child runs)."""
    trials = study.directory / "trials.csv"
    if trials.is_file():
        frame = pd.read_csv(trials)
        done = frame[frame["state"] == "COMPLETE"] if "state" in frame.columns else frame
        if "seconds" in done.columns:
            seconds = pd.to_numeric(done["seconds"], errors="coerce").dropna()
            if len(seconds):
                return float(seconds.median())
    return _mlflow_trial_seconds(study)


def _mlflow_trial_seconds(study: Study) -> float | None:
    parent = study.best.get("parent_run_id")
    if not parent:
        return None
    try:
        runs = store_init.mlflow_client(paths.mlflow_tracking_uri()).search_runs(
            [str(study.best["experiment_id"])],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'FINISHED'",
            max_results=1000,
        )
    except Exception:  # an estimate only: an unreachable store must not break a dry run
        return None
    seconds = [(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time and r.info.start_time]
    return float(statistics.median(seconds)) if seconds else None


def train_cells(cells: list[Cell], studies: dict[str, Study], data: Any, on_run: Any = None, *,
                workers: int = 0, pool: Any = None) -> None:
    """Train every feasible cell's seeds that its refit does not hold, one batch per cell
    (``train_batch``: the same structure, one member per seed), and fill ``cell.val_auc`` (in seed
    order, the refit's values included); ``on_run(cell, seed, result)`` for each trained seed, in
    cell order, here in the calling process (the MLflow runs).

    The cells train on ``workers`` one-thread processes (0 = one per core; ``training.parallel``):
    on 2 cores two cells at a time instead of one cell on two threads. A cell trains on one thread
    whatever ``workers`` is, so the matrix does not depend on it. ``pool``: a started
    ``training.parallel.OneThreadPool`` to use instead (``workers`` is then ignored).

    ``data``: one dataset for every cell (cross-budget), or a mapping target -> dataset (cross-tier)."""
    from training.parallel import OneThreadPool

    todo = [cell for cell in cells if cell.to_train]
    jobs = []
    for cell in todo:
        base = dataclasses.replace(studies[cell.source].train_config(), progress=False)
        jobs.append((cell.model_config, [dataclasses.replace(base, seed=seed) for seed in cell.to_train],
                     data[cell.target] if isinstance(data, Mapping) else data))
    cost = [len(c.to_train) * (c.est_seconds_per_run or (c.n_params or 1) * 1e-4) for c in todo]  # LPT order only
    trained: dict[int, dict[int, float]] = {}
    with contextlib.nullcontext(pool) if pool is not None else OneThreadPool(workers, len(jobs)) as running:
        for cell, results in zip(todo, running.map(_train_cell, jobs, cost), strict=True):
            trained[id(cell)] = {}
            for seed, result in zip(cell.to_train, results, strict=True):
                if on_run is not None:
                    on_run(cell, seed, result)
                trained[id(cell)][seed] = float(result.val_metrics.get(METRIC, math.nan) if result.ok else math.nan)
    for cell in cells:
        known = {**cell.from_refit, **trained.get(id(cell), {})} if cell.feasible else {}
        cell.val_auc = {s: known[s] for s in cell.seeds if s in known}


def _train_cell(model_config: Any, train_configs: list[Any], data: Any) -> list[Any]:
    """One cell's seeds as one batch; the weights are dropped (the stages keep only metrics)."""
    from training.batched import train_batch

    results = train_batch([model_config] * len(train_configs), train_configs, data)
    return [dataclasses.replace(r, state_dict=None) for r in results]


def welch_p(cell: list[float], diagonal: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test of a cell's seed AUCs against the diagonal's; None with
    fewer than two values on either side; 1 or 0 when neither side has any spread."""
    from scipy import stats as st

    if len(cell) < 2 or len(diagonal) < 2:
        return None
    if np.ptp(cell) == 0 and np.ptp(diagonal) == 0:  # scipy would divide float noise by zero
        return 1.0 if cell[0] == diagonal[0] else 0.0
    p = float(st.ttest_ind(cell, diagonal, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def cell_verdict(gap: float, p: float | None, alpha: float) -> str:
    """``within noise`` when ``p`` is None or ``p >= alpha``; else ``worse`` / ``better`` by the sign of ``gap``."""
    return "within noise" if p is None or p >= alpha else "worse" if gap < 0 else "better"


def summarise(cells: list[Cell], keys: list[str], cfg: Any) -> dict[str, Any]:
    """Mean/std matrices, per-cell verdicts against the diagonal (Welch at ``cfg.alpha``) and a
    transfer verdict per source: it transfers when none of its feasible cells is worse."""
    by = {(c.source, c.target): c for c in cells}
    stats, finite = {}, {}
    for key, c in by.items():
        values = [v for v in c.val_auc.values() if math.isfinite(v)]
        finite[key] = values
        stats[key] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None),
            "n": len(values),
        }
    out_cells, verdicts = [], {}
    for s in keys:
        worse, better, within, infeasible, failed = [], [], [], [], []
        for t in keys:
            c, st, diag = by[(s, t)], stats[(s, t)], stats[(t, t)]
            entry = {
                "source": s, "target": t, "feasible": c.feasible, "n_params": c.n_params,
                "model_config": dataclasses.asdict(c.model_config) if c.feasible else None,
                "seeds": c.seeds if c.feasible else [],
                "seeds_from_refit": [s for s in c.seeds if s in c.from_refit] if c.feasible else [],
                "val_auc": {str(k): v for k, v in sorted(c.val_auc.items())}, **st,
            }
            if not c.feasible:
                entry["verdict"] = "infeasible"
                if c.reason:
                    entry["reason"] = c.reason
                if s != t:
                    infeasible.append(t)
            elif st["mean"] is None or diag["mean"] is None:
                entry["verdict"] = "failed"
                failed.append(t)
            elif s == t:
                entry["verdict"] = "diagonal"
            else:
                gap = st["mean"] - diag["mean"]
                p = welch_p(finite[(s, t)], finite[(t, t)])
                entry.update(gap=gap, p_value=p, alpha=cfg.alpha)
                entry["verdict"] = cell_verdict(gap, p, cfg.alpha)
                {"worse": worse, "better": better, "within noise": within}[entry["verdict"]].append(t)
            out_cells.append(entry)
        compared = worse + better + within
        transfers = None if not compared else not worse
        text = ("inconclusive: no feasible off-diagonal cell" if transfers is None
                else f"transfers (within noise at {within or '-'}, better at {better or '-'})" if transfers
                else f"does not transfer: significantly worse at {worse}")
        if infeasible:
            text += f"; infeasible at {infeasible}"
        if failed:
            text += f"; failed at {failed}"
        verdicts[s] = {"transfers": transfers, "summary": text, "worse": worse, "better": better,
                       "within_noise": within, "infeasible": infeasible, "failed": failed}
    matrix = {k: [[stats[(s, t)][k] for t in keys] for s in keys] for k in ("mean", "std", "n")}
    return {"cells": out_cells, "transfer": verdicts, **matrix}


def hparams_table(studies: dict[str, Study]) -> pd.DataFrame:
    """The best hyperparameters side by side: one row per hyperparameter, one column per source (budget or tier)."""
    rows: dict[str, dict[str, Any]] = {}
    for key, study in studies.items():
        cfg = study.model_config()
        values = {**study.best["params"], "d_model (solved)": cfg.d_model, "d_ff (solved)": cfg.d_ff,
                  "n_params": study.best["n_params"], METRIC: study.val_auc, "trial": study.best["trial_number"]}
        for name, value in values.items():
            rows.setdefault(name, {})[key] = value
    table = pd.DataFrame.from_dict(rows, orient="index")[list(studies)]
    table.index.name = "hyperparameter"
    return table
