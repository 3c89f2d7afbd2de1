"""``tierhpo select --horizon H``: read the grid, decide, write ``results/select/h<H>/``, set the aliases.

Outputs (atomic): ``verdicts.json`` (``training.selection_record``, what the report reads),
``metrics.json`` (the headline numbers, for ``dvc metrics``) and ``registry.json`` (the aliases set;
``persist`` in dvc.yaml, as the stage has a registry side effect). Everything is also logged to a
``select-h<H>`` MLflow run in the best cell's experiment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from common import atomic, config, paths, store_init
from common.errors import TierHpoError
from pipelines.select.decide import SelectConfig, decide
from pipelines.select.registry import apply_aliases
from pipelines.select.scores import load_baselines, load_cell
from training.budget import parse_budget
from training.selection_record import SelectionRecord

STAGE = "select"
app = typer.Typer(add_completion=False)


def out_dir(horizon: int) -> Path:
    return paths.results_dir() / "select" / f"h{horizon}"


def grid_axes() -> tuple[list[str], list[str], list[int]]:
    """``hpo.tiers``, ``hpo.budgets`` (by size) and ``hpo.horizons`` from params.yaml."""
    hpo = config.load_params().get("hpo") or {}
    tiers, budgets = list(hpo.get("tiers") or []), list(hpo.get("budgets") or [])
    if not tiers or not budgets:
        raise TierHpoError("params.yaml hpo.tiers and hpo.budgets must list the grid to select from")
    return tiers, sorted(budgets, key=parse_budget), [int(h) for h in hpo.get("horizons") or []]


def registered_cells(record: SelectionRecord) -> dict[str, tuple[str, int] | None]:
    """``{tier/budget: (model name, version)}`` from each cell's promotion summary (None: not registered)."""
    out: dict[str, tuple[str, int] | None] = {}
    for c in record.cells:
        path = paths.promote_dir(c.tier, record.horizon) / c.budget / "summary.json"
        if not path.is_file():
            raise TierHpoError(f"{path} is missing; run: tierhpo promote --tier {c.tier} --horizon {record.horizon}")
        reg = (json.loads(path.read_text()).get("registry") or {})
        out[c.key] = (reg["name"], int(reg["version"])) if reg.get("version") else None
    return out


def metrics_document(record: SelectionRecord, registry: dict[str, Any]) -> dict[str, Any]:
    best = record.best_cell
    doc: dict[str, Any] = {"best/val/auc": best.val_auc, "best/test/auc": best.test.estimate,
                           "best/test/auc_lo": best.test.low, "best/test/auc_hi": best.test.high,
                           "gate_passed": int(record.gate.passed), "spa_p": record.gate.spa_p,
                           "n_test_days": record.n_test_days, "block_length": record.block_length}
    for v in record.vs_baselines:
        doc[f"best_minus_{v.baseline}/test/auc"] = v.diff.estimate
    return doc


def run_select(horizon: int, cfg: SelectConfig, *, registry: bool = True) -> tuple[SelectionRecord, dict[str, Any]]:
    from training.dataset import load_data_config, load_tier

    tiers, budgets, horizons = grid_axes()
    if horizon < 1:
        raise TierHpoError(f"--horizon must be >= 1, got {horizon}")
    if horizons and horizon not in horizons:
        raise TierHpoError(f"horizon {horizon} has no studies (hpo.horizons is {horizons}); choose one of those")
    symbol = load_data_config().symbol
    cells, baselines, rates = [], {}, {}
    for tier in tiers:
        data = load_tier(symbol, tier, horizon, require_validated=True)
        rates.setdefault("train", float(data.labels_of("train").mean()))
        rates.setdefault("val", float(data.labels_of("val").mean()))
        rates.setdefault("test", float(data.labels_of("test").mean()))
        baselines[tier] = load_baselines(tier, horizon)
        cells += [load_cell(tier, b, horizon, data) for b in budgets]
    record = decide(cells, baselines, cfg, symbol=symbol, horizon=horizon, base_rates=rates)
    reg: dict[str, Any] = {}
    if registry:

        client = store_init.mlflow_client(paths.mlflow_tracking_uri())
        reg = apply_aliases(client, record, registered_cells(record))
    return record, reg


def write_outputs(directory: Path, record: SelectionRecord, reg: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / "registry.json", reg)
    atomic.write_json(directory / "metrics.json", metrics_document(record, reg))
    record.write(directory)  # last: the report's input appears only with the rest


def log_run(record: SelectionRecord, reg: dict[str, Any], directory: Path) -> None:
    from mlflow.entities import Metric, Param

    from common.mlflow_runs import log_batch, stage_run

    best = paths.study_dir(record.best["tier"], record.best["budget"], record.horizon) / "best.json"
    experiment_id = json.loads(best.read_text()).get("experiment_id")
    if experiment_id is None:
        return
    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    with stage_run(client, str(experiment_id), STAGE, f"select-h{record.horizon}",
                   {"horizon": str(record.horizon), "best": record.best_cell.key,
                    "champion": str(reg.get("champion"))}) as run_id:
        now = 0
        metrics = [Metric(k, float(v), now, 0) for k, v in metrics_document(record, reg).items()]
        params = [Param("alpha", str(record.alpha)), Param("tiers", ",".join(record.tiers)),
                  Param("budgets", ",".join(record.budgets)), Param("n_seeds", str(record.n_seeds))]
        log_batch(client, run_id, metrics=metrics, params=params)
        client.log_artifacts(run_id, str(directory), artifact_path="select")


@app.command()
def main(
    horizon: Annotated[int, typer.Option(help="Label horizon (one of hpo.horizons).")],
    no_registry: Annotated[bool, typer.Option("--no-registry", help="Decide and write; set no alias.")] = False,
) -> None:
    """Compare every cell of the grid with seed-aware paired tests, name the best, gate the champion."""
    cfg = config.load(SelectConfig, "select")
    record, reg = run_select(horizon, cfg, registry=not no_registry)
    directory = out_dir(horizon)
    write_outputs(directory, record, reg)
    if not no_registry:
        log_run(record, reg, directory)
    best = record.best_cell
    typer.echo(f"best cell {best.key} (val AUC {best.val_auc:.4f}): test AUC {best.test.estimate:.4f} "
               f"[{best.test.low:.4f}, {best.test.high:.4f}] over {record.n_test_days} test days, {record.n_seeds} seeds")
    typer.echo(("champion: " if record.gate.passed else "no champion: ") + record.gate.reason)
    if reg.get("name"):
        typer.echo(f"models:/{reg['name']}@candidate -> {reg.get('candidate')}"
                   + (f"; @champion -> {reg['champion']}" if reg.get("champion") else ""))
    typer.echo(f"wrote {directory}")
