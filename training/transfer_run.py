"""One transfer matrix end to end: its plan text, its outputs and its MLflow run, for both transfer stages.

``tierhpo cross-budget`` (axis ``budget``, at one tier) and ``tierhpo cross-tier`` (axis ``tier``,
at one budget) differ only in what varies along the matrix and how a source's structure is
re-solved for a target (``training.transfer.plan_cells``). Everything after the plan is the same
and lives here, described by a :class:`TransferGrid`: the ``--dry-run`` text, ``matrix.json``,
``metrics.json``, ``heatmap.png``, ``hparams.md``, and one stage run in MLflow with one child run
per trained seed (seeds read from the study's ``refit.json`` are trained by HPO, not here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import atomic, paths, provenance, store_init
from common.mlflow_runs import create_stage_run
from training.study_record import METRIC, Study
from training.transfer import Cell, TransferConfig, hparams_table, summarise, train_cells

DIAGONAL = ("fresh seeds like every other cell (never the study's own seed: winner's curse); the seeds the "
            "study's HPO refit already trained with this configuration on this data (hpo.refit_seeds, the same "
            "seed derivation) are read from its refit.json (seeds_from_refit), the others are trained here")


@dataclass(frozen=True)
class TransferGrid:
    """One matrix: the stage, what varies along rows and columns, and what is held fixed."""

    stage: str  # "cross-budget" | "cross-tier": MLflow run name, stage tag and artifact folder
    axis: str  # "budget" | "tier": rows are sources, columns targets, both along this axis
    word: str  # "at" | "on": "2K hp at 8K", "a20 hp on a50"
    keys: list[str]  # the axis values, in matrix order
    fixed: dict[str, Any]  # the coordinates held fixed, e.g. {"tier": "a50", "horizon": 1}
    out_dir: Path

    @property
    def at(self) -> str:
        """The fixed coordinate other than the horizon (the tier of a cross-budget matrix, the budget of a cross-tier one)."""
        return str(next(v for k, v in self.fixed.items() if k != "horizon"))

    @property
    def horizon(self) -> int:
        return int(self.fixed["horizon"])


def format_plan(grid: TransferGrid, cells: list[Cell]) -> str:
    """The ``--dry-run`` text: every cell's solved shape, the seeds it trains or reads, and the estimated cost."""
    lines = [f"{grid.stage} plan for {grid.at} h{grid.horizon}: rows = whose hyperparameters, "
             f"columns = trained {grid.word} {grid.axis}"]
    width = max(map(len, grid.keys))
    total_runs, reused, total_seconds, unknown = 0, 0, 0.0, False  # a batch of k seeds costs as k runs (upper bound)
    for c in cells:
        head = f"  {c.source:>{width}} hp {grid.word} {c.target:<{width}}"
        if not c.feasible:
            lines.append(f"{head} infeasible: {c.reason}")
            continue
        m = c.model_config
        shape = (f"n_features={m.n_features} d_model={m.d_model} n_layers={m.n_layers} n_heads={m.n_heads} "
                 f"d_ff={m.d_ff} patch_len={m.patch_len} params={c.n_params:,}")
        runs = len(c.to_train)
        total_runs, reused = total_runs + runs, reused + len(c.from_refit)
        if not runs:
            work = "nothing to train"
        elif c.est_seconds_per_run is None:
            work, unknown = f"train seeds {c.to_train} (one batch); cost unknown (no recorded trial times)", True
        else:
            total_seconds += runs * c.est_seconds_per_run
            work = (f"train seeds {c.to_train} (one batch); ~{runs * c.est_seconds_per_run:.0f}s "
                    f"({runs} x {c.est_seconds_per_run:.1f}s per trial)")
        refit = f"seeds {list(c.from_refit)} from refit.json; " if c.from_refit else ""
        lines.append(f"{head} {shape}; {refit}{work}")
    est = f"~{total_seconds / 60:.1f} min" + (" + cells without recorded times" if unknown else "")
    lines.append(f"  total: {total_runs} training runs ({reused} seeds read from refit.json), estimated {est}")
    return "\n".join(lines)


def matrix_document(grid: TransferGrid, studies: dict[str, Study], cfg: TransferConfig,
                    summary: dict[str, Any]) -> dict[str, Any]:
    """``matrix.json``: the cells and verdicts of ``summary`` with what they mean and where they came from."""
    table = hparams_table(studies)
    return {
        **grid.fixed, "metric": METRIC, f"{grid.axis}s": grid.keys,
        "rows": f"whose best hyperparameters (source {grid.axis})",
        "columns": f"{grid.axis} they were trained {grid.word} (target)",
        "n_seeds": cfg.seeds, "diagonal": DIAGONAL, "alpha": cfg.alpha,
        "noise_rule": (f"off-diagonal within noise when Welch's t-test of its seed AUCs against the target "
                       f"{grid.axis}'s diagonal gives p >= {cfg.alpha:g} (two-sided); else worse or better by the "
                       "sign of mean(s,t) - mean(t,t)"),
        "studies": {k: {"study_name": s.best["study_name"], "trial_number": s.best["trial_number"],
                        "mlflow_run_id": s.best["mlflow_run_id"]} for k, s in studies.items()},
        "best_hyperparameters": json.loads(table.to_json(orient="columns")),
        **summary,
        **provenance.run_tags(),
    }


def dvc_metrics(grid: TransferGrid, doc: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (what ``dvc metrics show`` tabulates): mean val AUC per cell and the transfer flags."""
    keys = grid.keys
    mean = {f"{s}_hp": {f"{grid.word}_{t}": doc["mean"][i][j] for j, t in enumerate(keys)} for i, s in enumerate(keys)}
    transfers = {s: (None if v["transfers"] is None else int(v["transfers"])) for s, v in doc["transfer"].items()}
    return {METRIC: mean, "transfers": transfers}


def write_outputs(grid: TransferGrid, directory: Path, doc: dict[str, Any], table: pd.DataFrame) -> None:
    """``heatmap.png``, ``matrix.json``, ``metrics.json`` and ``hparams.md`` into ``directory``."""
    from evaluation.plots import heatmap

    keys = grid.keys
    by = {(c["source"], c["target"]): c for c in doc["cells"]}
    notes = []
    for s in keys:
        row = []
        for t in keys:
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
    heatmap(values, [f"{k} hp" for k in keys], [f"{grid.word} {k}" for k in keys], directory / "heatmap.png",
            annotations=notes, title=f"{grid.at} h{grid.horizon}: val AUC, mean ± sd over seeds",
            xlabel=f"trained {grid.word} {grid.axis}", ylabel="best hyperparameters of", cbar_label="val AUC")
    atomic.write_json(directory / "matrix.json", doc)
    atomic.write_json(directory / "metrics.json", dvc_metrics(grid, doc))
    verdicts = "\n".join(f"- **{k}**: {v['summary']}" for k, v in doc["transfer"].items())
    diagonal = "\n".join(f"- {c['source']}: seeds {c['seeds_from_refit']} from refit.json, "
                         f"{[s for s in c['seeds'] if s not in c['seeds_from_refit']]} trained here"
                         for c in doc["cells"] if c["source"] == c["target"] and c["feasible"])
    reasons = "\n".join(f"- {c['source']} hp {grid.word} {c['target']}: {c['reason']}" for c in doc["cells"]
                        if c["verdict"] == "infeasible" and c.get("reason"))
    atomic.write_text(directory / "hparams.md", (
        f"# Best hyperparameters across {grid.axis}s ({grid.at}, h{grid.horizon})\n\n"
        f"{table.to_markdown()}\n\n## Transfer verdicts\n\n{verdicts}\n\n{doc['noise_rule']}\n"
        f"\n## Diagonal\n\n{diagonal}\n"
        + (f"\n## Infeasible cells\n\n{reasons}\n" if reasons else "")))


def run_transfer(grid: TransferGrid, cfg: TransferConfig, studies: dict[str, Study], cells: list[Cell],
                 data: Any, pool: Any = None) -> dict[str, Any]:
    """Train the cells, summarise, log one ``grid.stage`` MLflow run (a child run per trained seed)
    and write the outputs atomically to ``grid.out_dir``; returns ``matrix.json``'s content."""
    import mlflow

    axes = f"{grid.axis}s"
    fixed = {k: str(v) for k, v in grid.fixed.items() if k != "horizon"}
    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    run = create_stage_run(client, studies[grid.keys[0]].best["experiment_id"], grid.stage, grid.stage,
                           {**{k: str(v) for k, v in grid.fixed.items()}, axes: ",".join(grid.keys)})
    experiment_id = run.info.experiment_id
    with paths.mlflow_fluent_tracking(), mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_params({"seeds": cfg.seeds, "alpha": cfg.alpha, axes: ",".join(grid.keys), **fixed})
        train_cells(cells, studies, data, on_run=_cell_logger(grid, client, experiment_id, fixed), workers=cfg.workers,
                    pool=pool)
        doc = matrix_document(grid, studies, cfg, summarise(cells, grid.keys, cfg))
        doc["mlflow_run_id"] = run.info.run_id
        for cell in doc["cells"]:
            if cell["mean"] is not None:
                mlflow.log_metric(f"{METRIC}_{cell['source']}_hp_{grid.word}_{cell['target']}", cell["mean"])
            if cell["seeds_from_refit"]:
                mlflow.set_tag(f"diagonal_from_refit.{cell['source']}", ",".join(map(str, cell["seeds_from_refit"])))
        for key, verdict in doc["transfer"].items():
            mlflow.set_tag(f"transfers.{key}", verdict["summary"])
        with atomic.atomic_path(grid.out_dir) as tmp:
            tmp.mkdir()
            write_outputs(grid, tmp, doc, hparams_table(studies))
            mlflow.log_artifacts(str(tmp), artifact_path=grid.stage)
    return doc


def _cell_logger(grid: TransferGrid, client: Any, experiment_id: str,
                 fixed: dict[str, str]) -> Callable[[Cell, int, Any], None]:
    """``on_run`` of ``train_cells``: one nested MLflow run per trained seed, with its val curves,
    written in one ``log_batch`` (a request per epoch cost ~17 ms each on SQLite: 3 s a stage)."""
    import mlflow
    from mlflow.entities import Metric, Param

    from common.mlflow_runs import log_batch

    def log_cell(cell: Cell, seed: int, result: Any) -> None:
        with mlflow.start_run(run_name=f"{cell.source}-hp-{grid.word}-{cell.target}-seed{seed}", nested=True,
                              experiment_id=experiment_id,
                              tags={f"source_{grid.axis}": cell.source, f"target_{grid.axis}": cell.target, **fixed,
                                    "seed": str(seed), "train_status": result.status, **provenance.run_tags()}) as run:
            stamp = int(time.time() * 1000)
            params = {**{f"model.{k}": v for k, v in dataclasses.asdict(cell.model_config).items()},
                      "n_params": result.n_params, "seed": seed}
            metrics = [Metric(k, float(v), stamp, int(step["epoch"]))  # the per-epoch val curves
                       for step in result.history for k, v in step.items() if k.startswith("val/")]
            # best-epoch summary under best/...
            metrics += [Metric(f"best/{k}", float(v), stamp, 0) for k, v in result.val_metrics.items() if math.isfinite(v)]
            log_batch(client, run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])

    return log_cell


def plan_or_run(grid: TransferGrid, cfg: TransferConfig, studies: dict[str, Study], plan: Callable[[], list[Cell]],
                load_data: Callable[[], Any], dry_run: bool, echo: Callable[[str], None]) -> None:
    """A stage's ``main`` after reading the studies: print the plan (``--dry-run``), or train,
    write and print the verdicts. The training processes start before ``plan()`` runs, so their
    start-up overlaps the planning (``training.parallel.OneThreadPool``)."""
    if dry_run:
        echo(format_plan(grid, plan()))
        return
    from training.parallel import OneThreadPool

    with OneThreadPool(cfg.workers, preload=("training.transfer", "training.batched")) as pool:
        doc = run_transfer(grid, cfg, studies, plan(), load_data(), pool=pool)
    for key, verdict in doc["transfer"].items():
        echo(f"{key}: {verdict['summary']}")
    echo(f"wrote {grid.out_dir}")