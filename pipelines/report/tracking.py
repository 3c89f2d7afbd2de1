"""The report's MLflow run: one ``report`` run in the experiment the HPO studies used, with the
report files as artifacts and the headline numbers as metrics.

Created through ``common.mlflow_runs.stage_run``, the one stage-run helper: under ``mlflow run`` it
nests under ``MLFLOW_RUN_ID`` (a bad id is the same one-line error in every stage), and the run always
ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from common import paths
from common.errors import TierHpoError
from pipelines.report.grid import mlflow_metrics
from pipelines.report.inputs import read_json

REPORT_FILES = ("summary.md", "report.json", "metrics.json", "trials.csv", "headline", "plots")


def _experiment_id(tier: str) -> str | None:
    """The experiment the tier's HPO studies logged to (from any best.json)."""
    for best_path in sorted((paths.results_dir() / "hpo" / tier).glob("*/h*/best.json")):
        exp = read_json(best_path).get("experiment_id")
        if exp:
            return str(exp)
    return None


def resolve_experiment(tier: str) -> tuple[str, str | None]:
    """``(experiment_id, parent_run_id)`` of the report run, as the HPO engine places its studies.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` set) the report nests under that run, in its experiment.
    Otherwise it goes to the experiment recorded in the tier's ``best.json``, which must exist in
    the tracking store (else the store is not the one the HPO used); a ``best.json`` without one
    falls back to the engine's experiment name for the tier.
    """
    from mlflow.exceptions import MlflowException

    from common import store_init
    from common.mlflow_runs import parent_run

    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    outer_experiment, outer = parent_run(client)
    if outer:
        return str(outer_experiment), outer
    experiment_id = _experiment_id(tier)
    if experiment_id is None:
        from training.search.tracking import create_ml_experiment, experiment_name, mark_ml_experiment

        found = client.get_experiment_by_name(experiment_name(tier))
        if found is not None and found.lifecycle_stage == "active":
            mark_ml_experiment(client, found.experiment_id, found.tags)
            return found.experiment_id, None
        return create_ml_experiment(client, experiment_name(tier),
                                    f"{paths.mlflow_artifact_root()}/{experiment_name(tier)}"), None
    try:
        found = client.get_experiment(experiment_id)
    except MlflowException:
        found = None
    if found is None or found.lifecycle_stage != "active":
        raise TierHpoError(
            f"the MLflow experiment of tier {tier} (id {experiment_id}, from best.json) is not in the tracking "
            f"store {paths.mlflow_tracking_uri()}; point MLFLOW_TRACKING_URI at the store the HPO used "
            "(or pass --no-mlflow)"
        )
    return str(experiment_id), None


def log_to_mlflow(report: dict[str, Any], report_dir: Path) -> str:
    """One ``report`` run in the grid's experiment with the report files and headline metrics.

    Through ``common.mlflow_runs.stage_run``: nested under ``MLFLOW_RUN_ID`` when set, always ended.
    """
    from mlflow.entities import Metric, Param

    from common import store_init
    from common.mlflow_runs import log_batch, stage_run

    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    experiment_id, _ = resolve_experiment(report["tiers"][0])
    tags = {"tiers": ",".join(report["tiers"]), "budgets": ",".join(report["budgets"]),
            "git_commit": report["git_commit"], "raw_version": report["raw_version"],
            "horizons": ",".join(str(h) for h in report["horizons"])}
    with stage_run(client, experiment_id, "report", "report", tags) as run_id:
        now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in sorted(mlflow_metrics(report["headline"]).items())]
        params = [Param(k, str(v)) for k, v in sorted(report["params"].items())]
        log_batch(client, run_id, metrics=metrics, params=params)
        for g in report["grid"]:
            if g["available"]:
                best = g["answer"]["best"]
                client.set_tag(run_id, f"best_h{g['horizon']}", f"{best['tier']}/{best['budget']}")
        for name in REPORT_FILES:
            path = report_dir / name
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=f"report/{name}")
            elif path.is_file():
                client.log_artifact(run_id, str(path), artifact_path="report")
    return run_id
