"""``tierhpo cross-tier``: do one tier's best hyperparameters transfer to the other tiers at the same budget?

For one budget and horizon, the best trial of every tier's study (``best.json``) is retrained on
every other tier's data: its structure (depth, heads, FFN ratio, patch length) and its training
hyperparameters (lr, weight decay, dropout, batch size, ...) are kept, and the width is re-solved
by ``training.budget.solve`` for the same budget, because the input width (the tier's number of
features) differs between tiers. A structure with no width inside the budget's tolerance on the
target tier is an *infeasible* cell, reported with its reason and never trained.

Seeds, diagonal and verdicts are those of ``tierhpo cross-budget`` (``training.transfer``): each
cell is trained with ``cross_tier.seeds`` fresh seeds (never the study's own: winner's curse) in
one batch, the diagonal (a tier's configuration on its own tier) too. Cell ``(s, t)`` is compared
with the diagonal ``(t, t)`` by Welch's t-test at ``cross_tier.alpha``: *within noise*, *worse* or
*better*. Tier ``s``'s hyperparameters *transfer* when none of its feasible cells is worse; with no
feasible off-diagonal cell the verdict is ``inconclusive``.

Outputs in ``results/cross_tier/<budget>/h<h>/``: ``matrix.json``, ``metrics.json``,
``heatmap.png``, ``hparams.md``; one ``cross-tier`` MLflow run (in the first tier's experiment)
with one child run per trained seed. ``--dry-run`` prints the plan and trains and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer

from common import atomic, config, paths, provenance, store_init
from common.errors import TierHpoError
from common.mlflow_runs import create_stage_run
from training.study_record import METRIC, Study, check_study_horizon, load_data, read_study
from training.transfer import (
    Cell,
    architecture_of,
    fresh_seeds,
    hparams_table,
    recorded_trial_seconds,
    solver_rules,
    summarise,
    train_cells,
)

STAGE = "cross-tier"
app = typer.Typer(add_completion=False)


@dataclass
class CrossTierConfig:
    """``params.yaml`` section ``cross_tier``."""

    seeds: int = 3  # fresh seeds per cell (never the study's own), trained as one batch
    alpha: float = 0.05  # level of the two-sided Welch t-test of a cell against the diagonal
    tiers: list[str] = field(default_factory=list)  # empty = the hpo section's tiers

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise TierHpoError(f"cross_tier.seeds must be >= 2 (the t-test needs a spread), got {self.seeds}")
        if not 0.0 < self.alpha < 1.0:
            raise TierHpoError(f"cross_tier.alpha must be in (0, 1), got {self.alpha}")


def resolve_tiers(tiers: list[str] | None) -> list[str]:
    """The given tiers, else ``hpo.tiers`` (in that order); at least two, distinct."""
    if not tiers:
        tiers = list((config.load_params().get("hpo") or {}).get("tiers") or [])
    tiers = [str(t).strip() for t in tiers]
    if len(set(tiers)) != len(tiers):
        raise TierHpoError(f"tiers must be distinct, got {tiers}")
    if len(tiers) < 2:
        raise TierHpoError(f"cross-tier needs at least two tiers, got {tiers}; pass --tiers a20,a50 or "
                           "declare them in params.yaml (cross_tier.tiers or hpo.tiers)")
    return tiers


# ---------------------------------------------------------------------------- the plan


def infeasible_reason(arch: Any, budget: str, n_features: int, context_len: int, rules: dict[str, Any]) -> str:
    """Why ``solve`` found no width for ``arch`` at ``budget`` with ``n_features`` inputs."""
    if arch.patch_len > context_len:
        return f"patch_len {arch.patch_len} > context_len {context_len}"
    return (f"no d_model (a multiple of n_heads={arch.n_heads}, head width >= {rules['min_head_dim']}) puts "
            f"n_layers={arch.n_layers} d_ff_ratio={arch.d_ff_ratio:g} patch_len={arch.patch_len} with "
            f"{n_features} input features within {rules['tolerance']:.0%} of {budget}")


def plan(studies: dict[str, Study], budget: str, cfg: CrossTierConfig, rules: dict[str, Any]) -> list[Cell]:
    """Every (source tier, target tier) cell with its solved config, seeds and estimated cost; trains nothing.

    ``studies``: tier -> its study at ``budget``. The diagonal keeps the study's own configuration;
    an off-diagonal cell re-solves the width for the target tier's input width and context."""
    from training.budget import count_params, solve

    durations = {t: recorded_trial_seconds(s) for t, s in studies.items()}
    cells = []
    for source, study in studies.items():
        arch, src_cfg = architecture_of(study), study.model_config()
        seeds = fresh_seeds(study.train_config().seed, cfg.seeds)
        for target, target_study in studies.items():
            reason = None
            if target == source:
                model_cfg = src_cfg
            else:
                tgt = target_study.model_config()
                model_cfg = solve(arch, budget, tgt.n_features, tgt.context_len, dropout=src_cfg.dropout, **rules)
                if model_cfg is None:
                    reason = infeasible_reason(arch, budget, tgt.n_features, tgt.context_len, rules)
            n_params = count_params(model_cfg) if model_cfg is not None else None
            cells.append(Cell(source, target, model_cfg, n_params, list(seeds), durations[target], reason=reason))
    return cells


def format_plan(cells: list[Cell], budget: str, horizon: int) -> str:
    lines = [f"cross-tier plan for {budget} h{horizon}: rows = whose hyperparameters, columns = trained on tier"]
    total_runs, total_seconds, unknown = 0, 0.0, False  # a batch of k seeds is costed as k runs (an upper bound)
    for c in cells:
        head = f"  {c.source:>5} hp on {c.target:<5}"
        if not c.feasible:
            lines.append(f"{head} infeasible: {c.reason}")
            continue
        m = c.model_config
        shape = (f"n_features={m.n_features} d_model={m.d_model} n_layers={m.n_layers} n_heads={m.n_heads} "
                 f"d_ff={m.d_ff} patch_len={m.patch_len} params={c.n_params:,}")
        runs = len(c.to_train)
        total_runs += runs
        if c.est_seconds_per_run is None:
            cost, unknown = "cost unknown (no recorded trial times)", unknown or runs > 0
        else:
            total_seconds += runs * c.est_seconds_per_run
            cost = f"~{runs * c.est_seconds_per_run:.0f}s ({runs} x {c.est_seconds_per_run:.1f}s per trial)"
        lines.append(f"{head} {shape}; train seeds {c.to_train} (one batch); {cost}")
    est = f"~{total_seconds / 60:.1f} min" + (" + cells without recorded times" if unknown else "")
    lines.append(f"  total: {total_runs} training runs, estimated {est}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- outputs


def matrix_document(budget: str, horizon: int, tiers: list[str], studies: dict[str, Study], cfg: CrossTierConfig,
                    summary: dict[str, Any]) -> dict[str, Any]:
    table = hparams_table(studies)
    return {
        "budget": budget, "horizon": horizon, "metric": METRIC, "tiers": tiers,
        "rows": "whose best hyperparameters (source tier)", "columns": "tier they were trained on (target)",
        "n_seeds": cfg.seeds,
        "diagonal": "trained with fresh seeds like every other cell (never the study's own seed: winner's curse)",
        "alpha": cfg.alpha,
        "noise_rule": (f"off-diagonal within noise when Welch's t-test of its seed AUCs against the target tier's "
                       f"diagonal gives p >= {cfg.alpha:g} (two-sided); else worse or better by the sign of "
                       "mean(s,t) - mean(t,t)"),
        "studies": {t: {"study_name": s.best["study_name"], "trial_number": s.best["trial_number"],
                        "mlflow_run_id": s.best["mlflow_run_id"]} for t, s in studies.items()},
        "best_hyperparameters": json.loads(table.to_json(orient="columns")),
        **summary,
        **provenance.run_tags(),
    }


def dvc_metrics(doc: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (what ``dvc metrics show`` tabulates): mean val AUC per cell and the transfer flags."""
    tiers = doc["tiers"]
    mean = {f"{s}_hp": {f"on_{t}": doc["mean"][i][j] for j, t in enumerate(tiers)} for i, s in enumerate(tiers)}
    transfers = {s: (None if v["transfers"] is None else int(v["transfers"])) for s, v in doc["transfer"].items()}
    return {METRIC: mean, "transfers": transfers}


def write_outputs(directory: Path, doc: dict[str, Any], table: pd.DataFrame) -> None:
    from evaluation.plots import heatmap

    tiers = doc["tiers"]
    by = {(c["source"], c["target"]): c for c in doc["cells"]}
    notes = []
    for s in tiers:
        row = []
        for t in tiers:
            c = by[(s, t)]
            if c["verdict"] == "infeasible":
                row.append("infeasible")
            elif c["mean"] is None:
                row.append("failed")
            else:
                mark = {"worse": " (worse)", "better": " (better)", "diagonal": " (own)"}.get(c["verdict"], "")
                row.append(f"{c['mean']:.3f}\n±{c['std']:.3f}{mark}")
        notes.append(row)
    values = np.array([[np.nan if v is None else v for v in row] for row in doc["mean"]], dtype=float)
    heatmap(values, [f"{t} hp" for t in tiers], [f"on {t}" for t in tiers], directory / "heatmap.png",
            annotations=notes, title=f"{doc['budget']} h{doc['horizon']}: val AUC, mean ± sd over seeds",
            xlabel="trained on tier", ylabel="best hyperparameters of", cbar_label="val AUC")
    atomic.write_json(directory / "matrix.json", doc)
    atomic.write_json(directory / "metrics.json", dvc_metrics(doc))
    verdicts = "\n".join(f"- **{t}**: {v['summary']}" for t, v in doc["transfer"].items())
    reasons = "\n".join(f"- {c['source']} hp on {c['target']}: {c['reason']}" for c in doc["cells"]
                        if c["verdict"] == "infeasible" and c.get("reason"))
    atomic.write_text(directory / "hparams.md", (
        f"# Best hyperparameters across tiers ({doc['budget']}, h{doc['horizon']})\n\n"
        f"{table.to_markdown()}\n\n## Transfer verdicts\n\n{verdicts}\n\n{doc['noise_rule']}\n"
        + (f"\n## Infeasible cells\n\n{reasons}\n" if reasons else "")))


# ---------------------------------------------------------------------------- MLflow


def run_cross_tier(budget: str, horizon: int, tiers: list[str], cfg: CrossTierConfig,
                   data: dict[str, Any]) -> dict[str, Any]:
    """Train (``data``: tier -> its dataset), summarise, log a ``cross-tier`` MLflow run, write the outputs."""
    import mlflow

    studies = {t: read_study(t, budget, horizon) for t in tiers}
    cells = plan(studies, budget, cfg, solver_rules())
    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    run = create_stage_run(client, studies[tiers[0]].best["experiment_id"], STAGE, STAGE,
                           {"budget": budget, "horizon": str(horizon), "tiers": ",".join(tiers)})
    experiment_id = run.info.experiment_id
    with paths.mlflow_fluent_tracking(), mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_params({"seeds": cfg.seeds, "alpha": cfg.alpha, "tiers": ",".join(tiers), "budget": budget})

        def log_cell(cell: Cell, seed: int, result: Any) -> None:
            with mlflow.start_run(run_name=f"{cell.source}-hp-on-{cell.target}-seed{seed}", nested=True,
                                  experiment_id=experiment_id,
                                  tags={"source_tier": cell.source, "target_tier": cell.target, "budget": budget,
                                        "seed": str(seed), "train_status": result.status, **provenance.run_tags()}):
                mlflow.log_params({**{f"model.{k}": v for k, v in dataclasses.asdict(cell.model_config).items()},
                                   "n_params": result.n_params, "seed": seed})
                for step in result.history:
                    mlflow.log_metrics({k: v for k, v in step.items() if k.startswith("val/")}, step=int(step["epoch"]))
                mlflow.log_metrics({f"best/{k}": v for k, v in result.val_metrics.items() if math.isfinite(v)})

        train_cells(cells, studies, data, on_run=log_cell)
        doc = matrix_document(budget, horizon, tiers, studies, cfg, summarise(cells, tiers, cfg))
        doc["mlflow_run_id"] = run.info.run_id
        for cell in doc["cells"]:
            if cell["mean"] is not None:
                mlflow.log_metric(f"{METRIC}_{cell['source']}_hp_on_{cell['target']}", cell["mean"])
        for tier, verdict in doc["transfer"].items():
            mlflow.set_tag(f"transfers.{tier}", verdict["summary"])
        with atomic.atomic_path(paths.cross_tier_dir(budget, horizon)) as tmp:
            tmp.mkdir()
            write_outputs(tmp, doc, hparams_table(studies))
            mlflow.log_artifacts(str(tmp), artifact_path=STAGE)
    return doc


@app.command()
def main(
    budget: str = typer.Option(..., help="Parameter budget, e.g. 20K."),
    horizon: int = typer.Option(..., help="Prediction horizon in days."),
    tiers: str = typer.Option(None, help="Comma-separated tiers (default: cross_tier.tiers, else hpo.tiers)."),
    seeds: int = typer.Option(None, help="Seeds per cell (default: cross_tier.seeds)."),
    dry_run: bool = typer.Option(False, "--dry-run", envvar="TIERHPO_DRY_RUN",
                                 help="Print the plan and estimated cost; train and write nothing."),
) -> None:
    """Retrain each tier's best hyperparameters on every other tier (same budget) and judge whether they transfer."""
    from training.budget import parse_budget
    from training.dataset import check_tier, load_data_config

    parse_budget(budget)
    cfg = config.load(CrossTierConfig, "cross_tier", seeds=seeds)
    chosen = resolve_tiers(tiers.split(",") if tiers else cfg.tiers)
    known = load_data_config().tiers
    for tier in chosen:
        check_tier(tier, known)
    check_study_horizon(chosen[0], horizon)
    studies = {t: read_study(t, budget, horizon) for t in chosen}
    if dry_run:
        typer.echo(format_plan(plan(studies, budget, cfg, solver_rules()), budget, horizon))
        return
    data = {t: load_data(s) for t, s in studies.items()}
    doc = run_cross_tier(budget, horizon, chosen, cfg, data)
    for tier, verdict in doc["transfer"].items():
        typer.echo(f"{tier}: {verdict['summary']}")
    typer.echo(f"wrote {paths.cross_tier_dir(budget, horizon)}")
