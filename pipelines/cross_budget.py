"""``tierhpo cross-budget``: do one budget's best hyperparameters transfer to the other budgets?

For one tier and horizon, the best trial of every budget's study (``best.json``) is retrained at
every other budget: its structure (depth, heads, FFN ratio, patch length) is kept, the width is
re-solved by ``training.budget.solve`` for the target budget, and its training hyperparameters
(lr, weight decay, dropout, batch size, ...) are kept. A structure with no width inside the
budget's tolerance is reported as an *infeasible* cell, never trained.

Seeds. Each cell is trained with ``seeds`` fresh seeds derived from the source study's seed
(:func:`fresh_seeds`, never the study's own seed), all of a cell's seeds in one batch
(``training.batched.train_batch``: same structure, different seeds). The diagonal cell (a
budget's hyperparameters at its own budget) is trained the same way: reusing the study's own
result would carry the winner's curse (that seed's val AUC is the maximum over the search, so it
is biased upwards), and the diagonal would no longer be comparable with the other cells.

Transfer verdict. Cell ``(s, t)`` holds the validation AUCs of budget ``s``'s hyperparameters
trained at budget ``t``, one per seed. They are compared with the diagonal ``(t, t)``, the target
budget's own best, by Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``, two-sided):
the cell is *within noise* when ``p >= alpha``, otherwise *worse* or *better* by the sign of
``gap = mean(s, t) - mean(t, t)``. Fewer than two finite seeds on either side: no test
(``p_value`` None), *within noise*. Both sides without any seed-to-seed spread: ``p`` is 1 when
the means are equal, else 0. Budget ``s``'s hyperparameters *transfer* when none of its feasible
cells is worse; with no feasible off-diagonal cell the verdict is ``inconclusive``.

``--dry-run`` prints the plan (cells, solved configs, seeds to train, estimated cost from the
studies' recorded trial durations) and trains and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
from training.study_record import METRIC, Study, check_study_horizon, load_data, read_study, resolve_budgets
from training.transfer import (
    Cell,
    architecture_of,
    fresh_seeds,
    hparams_table,
    recorded_trial_seconds,
    solver_rules,
    summarise,
    train_cells,
    welch_p,  # noqa: F401  (welch_p: re-exported, part of this stage's documented rule)
)

log = logging.getLogger(__name__)

STAGE = "cross-budget"
app = typer.Typer(add_completion=False)


@dataclass
class CrossBudgetConfig:
    """``params.yaml`` section ``cross_budget``."""

    seeds: int = 3  # fresh seeds per cell (never the study's own), trained as one batch
    alpha: float = 0.05  # level of the two-sided Welch t-test of a cell against the diagonal
    budgets: list[str] = field(default_factory=list)  # empty = the hpo section's budgets

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise TierHpoError(f"cross_budget.seeds must be >= 2 (the t-test needs a spread), got {self.seeds}")
        if not 0.0 < self.alpha < 1.0:
            raise TierHpoError(f"cross_budget.alpha must be in (0, 1), got {self.alpha}")


# ---------------------------------------------------------------------------- the plan


def plan(studies: dict[str, Study], cfg: CrossBudgetConfig, rules: dict[str, Any]) -> list[Cell]:
    """Every (source, target) cell with its solved config, seeds and estimated cost; trains nothing."""
    from training.budget import count_params, solve

    first = next(iter(studies.values())).model_config()
    durations = {b: recorded_trial_seconds(s) for b, s in studies.items()}
    cells = []
    for source, study in studies.items():
        arch, src_cfg = architecture_of(study), study.model_config()
        if (src_cfg.n_features, src_cfg.context_len) != (first.n_features, first.context_len):
            raise TierHpoError(f"studies of {study.tier} h{study.horizon} disagree on features/context_len; rerun them")
        seeds = fresh_seeds(study.train_config().seed, cfg.seeds)
        for target in studies:
            if target == source:
                model_cfg = src_cfg
            else:
                model_cfg = solve(arch, target, src_cfg.n_features, src_cfg.context_len, dropout=src_cfg.dropout,
                                  **rules)
            n_params = count_params(model_cfg) if model_cfg is not None else None
            cells.append(Cell(source, target, model_cfg, n_params, list(seeds), durations[target]))
    return cells


def format_plan(cells: list[Cell], tier: str, horizon: int) -> str:
    lines = [f"cross-budget plan for {tier} h{horizon}: rows = whose hyperparameters, columns = trained at budget"]
    total_runs, total_seconds, unknown = 0, 0.0, False  # a batch of k seeds is costed as k runs (an upper bound)
    for c in cells:
        head = f"  {c.source:>6} hp @ {c.target:<6}"
        if not c.feasible:
            lines.append(f"{head} infeasible: no width within the budget tolerance for this structure")
            continue
        m = c.model_config
        shape = (f"d_model={m.d_model} n_layers={m.n_layers} n_heads={m.n_heads} d_ff={m.d_ff} patch_len={m.patch_len} "
                 f"params={c.n_params:,}")
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


def matrix_document(tier: str, horizon: int, budgets: list[str], cells: list[Cell], studies: dict[str, Study],
                    cfg: CrossBudgetConfig, summary: dict[str, Any]) -> dict[str, Any]:
    table = hparams_table(studies)
    return {
        "tier": tier, "horizon": horizon, "metric": METRIC, "budgets": budgets,
        "rows": "whose best hyperparameters (source budget)", "columns": "budget they were trained at (target)",
        "n_seeds": cfg.seeds,
        "diagonal": "trained with fresh seeds like every other cell (never the study's own seed: winner's curse)",
        "alpha": cfg.alpha,
        "noise_rule": (f"off-diagonal within noise when Welch's t-test of its seed AUCs against the diagonal's "
                       f"gives p >= {cfg.alpha:g} (two-sided); else worse or better by the sign of "
                       "mean(s,t) - mean(t,t)"),
        "studies": {b: {"study_name": s.best["study_name"], "trial_number": s.best["trial_number"],
                        "mlflow_run_id": s.best["mlflow_run_id"]} for b, s in studies.items()},
        "best_hyperparameters": json.loads(table.to_json(orient="columns")),
        **summary,
        **provenance.run_tags(),
    }


def dvc_metrics(doc: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (what ``dvc metrics show`` tabulates): mean val AUC per cell and the transfer flags."""
    budgets = doc["budgets"]
    mean = {f"{s}_hp": {f"at_{t}": doc["mean"][i][j] for j, t in enumerate(budgets)}
            for i, s in enumerate(budgets)}
    transfers = {s: (None if v["transfers"] is None else int(v["transfers"])) for s, v in doc["transfer"].items()}
    return {METRIC: mean, "transfers": transfers}


def write_outputs(directory: Path, doc: dict[str, Any], table: pd.DataFrame) -> None:
    from evaluation.plots import heatmap

    budgets = doc["budgets"]
    by = {(c["source"], c["target"]): c for c in doc["cells"]}
    notes = []
    for s in budgets:
        row = []
        for t in budgets:
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
    heatmap(values, [f"{b} hp" for b in budgets], [f"at {b}" for b in budgets], directory / "heatmap.png",
            annotations=notes, title=f"{doc['tier']} h{doc['horizon']}: val AUC, mean ± sd over seeds",
            xlabel="trained at budget", ylabel="best hyperparameters of", cbar_label="val AUC")
    atomic.write_json(directory / "matrix.json", doc)
    atomic.write_json(directory / "metrics.json", dvc_metrics(doc))
    verdicts = "\n".join(f"- **{b}**: {v['summary']}" for b, v in doc["transfer"].items())
    atomic.write_text(directory / "hparams.md", (
        f"# Best hyperparameters across budgets ({doc['tier']}, h{doc['horizon']})\n\n"
        f"{table.to_markdown()}\n\n## Transfer verdicts\n\n{verdicts}\n\n{doc['noise_rule']}\n"))


# ---------------------------------------------------------------------------- MLflow


def run_cross_budget(tier: str, horizon: int, budgets: list[str], cfg: CrossBudgetConfig, data: Any) -> dict[str, Any]:
    """Train, summarise, log to MLflow under a ``cross-budget`` run and write the outputs atomically."""
    import mlflow

    studies = {b: read_study(tier, b, horizon) for b in budgets}
    cells = plan(studies, cfg, solver_rules())
    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    run = create_stage_run(client, studies[budgets[0]].best["experiment_id"], STAGE, STAGE,
                           {"tier": tier, "horizon": str(horizon), "budgets": ",".join(budgets)})
    experiment_id = run.info.experiment_id
    with paths.mlflow_fluent_tracking(), mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_params({"seeds": cfg.seeds, "alpha": cfg.alpha, "budgets": ",".join(budgets)})

        def log_cell(cell: Cell, seed: int, result: Any) -> None:
            with mlflow.start_run(run_name=f"{cell.source}-hp-at-{cell.target}-seed{seed}", nested=True,
                                  experiment_id=experiment_id,
                                  tags={"source_budget": cell.source, "target_budget": cell.target,
                                        "seed": str(seed), "train_status": result.status, **provenance.run_tags()}):
                mlflow.log_params({**{f"model.{k}": v for k, v in dataclasses.asdict(cell.model_config).items()},
                                   "n_params": result.n_params, "seed": seed})
                for step in result.history:
                    mlflow.log_metrics({k: v for k, v in step.items() if k.startswith("val/")}, step=int(step["epoch"]))
                # best-epoch summary under best/...; val/... are the per-epoch curves above
                mlflow.log_metrics({f"best/{k}": v for k, v in result.val_metrics.items() if math.isfinite(v)})

        train_cells(cells, studies, data, on_run=log_cell)
        doc = matrix_document(tier, horizon, budgets, cells, studies, cfg, summarise(cells, budgets, cfg))
        doc["mlflow_run_id"] = run.info.run_id
        for cell in doc["cells"]:
            if cell["mean"] is not None:
                mlflow.log_metric(f"{METRIC}_{cell['source']}_hp_at_{cell['target']}", cell["mean"])
        for budget, verdict in doc["transfer"].items():
            mlflow.set_tag(f"transfers.{budget}", verdict["summary"])
        table = hparams_table(studies)
        with atomic.atomic_path(paths.cross_budget_dir(tier, horizon)) as tmp:
            tmp.mkdir()
            write_outputs(tmp, doc, table)
            mlflow.log_artifacts(str(tmp), artifact_path=STAGE)
    return doc


@app.command()
def main(
    tier: str = typer.Option(..., help="Feature tier, e.g. a50."),
    horizon: int = typer.Option(..., help="Prediction horizon in days."),
    budgets: str = typer.Option(None, help="Comma-separated budgets (default: cross_budget.budgets, else hpo.budgets)."),
    seeds: int = typer.Option(None, help="Seeds per cell (default: cross_budget.seeds)."),
    dry_run: bool = typer.Option(False, "--dry-run", envvar="TIERHPO_DRY_RUN",
                                 help="Print the plan and estimated cost; train and write nothing."),
) -> None:
    """Retrain each budget's best hyperparameters at every other budget and judge whether they transfer."""
    from training.dataset import check_tier, load_data_config

    check_tier(tier, load_data_config().tiers)
    check_study_horizon(tier, horizon)
    cfg = config.load(CrossBudgetConfig, "cross_budget", seeds=seeds)
    chosen = resolve_budgets(budgets.split(",") if budgets else cfg.budgets)
    if len(chosen) < 2:
        raise TierHpoError(f"cross-budget needs at least two budgets, got {chosen}")
    if dry_run:
        studies = {b: read_study(tier, b, horizon) for b in chosen}
        typer.echo(format_plan(plan(studies, cfg, solver_rules()), tier, horizon))
        return
    data = load_data(read_study(tier, chosen[0], horizon))
    doc = run_cross_budget(tier, horizon, chosen, cfg, data)
    for budget, verdict in doc["transfer"].items():
        typer.echo(f"{budget}: {verdict['summary']}")
    typer.echo(f"wrote {paths.cross_budget_dir(tier, horizon)}")
