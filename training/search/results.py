"""The end of a ``tierhpo hpo`` run: study summary, best trial, Optuna plots (PNG + HTML), the parent run's final
state, and the DVC outputs (``best.json``, ``model.pt``, ``metrics.json``, ``trials.csv``).

The best trial is the highest objective among *useful* COMPLETE trials (not degenerate, not a
duplicate), earliest on ties. Its weights were uploaded to its MLflow run when it became the
best (``checkpoint/model.pt``), so any worker's trial can be the study's best; ``model.pt`` is
downloaded from there and checked to load with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from common import atomic, provenance
from common.errors import TierHpoError
from common.redact import redact
from training.budget import parse_budget
from training.search import plots as study_plots
from training.search import waste
from training.search.analysis import param_importance  # the one importance computation (PED-ANOVA)
from training.search.study_outputs import STUDY_JSON, study_document
from training.search.tracking import RUN_ATTR

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint/model.pt"


@dataclass
class StudyResult:
    study_name: str
    storage: str  # without credentials
    best: dict[str, Any]  # the best.json document
    metrics: dict[str, Any]  # the metrics.json document
    rows: list[dict[str, Any]]  # trials.csv
    best_run_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    importances: dict[str, float] = field(default_factory=dict)
    document: dict[str, Any] | None = None  # study.json (training.search.study_outputs), for the report
    report: Any = None  # the WorkerReport of the run that produced it (run_study sets it)


def select_best(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    useful = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
              and waste.reason(t) is None and not waste.is_void(t)]
    return max(useful, key=lambda t: (t.value, -t.number)) if useful else None


def trial_rows(trials: Iterable[FrozenTrial]) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(waste.counted(trials) + [t for t in trials if t.state == TrialState.RUNNING],
                    key=lambda t: t.number):
        info = t.user_attrs.get("info") or {}
        row = {
            "number": t.number, "state": t.state.name, "phase": t.user_attrs.get("phase"),
            "value": t.value, "wasted": waste.reason(t) if t.state.is_finished() else None,
            "fail_reason": waste.fail_reason(t), "duplicate_of": info.get("duplicate_of"),
            "retry_of": info.get("retry_of"), "forced_index": t.user_attrs.get("forced_index"),
            "epochs": info.get("epochs"), "best_epoch": info.get("best_epoch"),
            "n_params": info.get("n_params"),
            "seconds": (info.get("timing") or {}).get("total_s"),
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            "mlflow_run_id": t.user_attrs.get(RUN_ATTR),
        }
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row.update(t.user_attrs.get("metrics") or {})
        row["coverage/overall"] = (info.get("coverage") or {}).get("coverage/overall")
        rows.append(row)
    return rows


def study_metrics(trials: list[FrozenTrial], n_trials: int, best: FrozenTrial | None,
                  coverage: float | None) -> dict[str, Any]:
    finished = waste.counted(trials)
    summary = waste.summarize(trials)
    timings = [(t.user_attrs.get("info") or {}).get("timing") or {} for t in finished]
    total_s = sum(x.get("total_s", 0.0) for x in timings)
    tracking_s = sum(x.get("tracking_s", 0.0) for x in timings)
    useful_values = sorted((t.value for t in finished if t.state == TrialState.COMPLETE
                            and waste.reason(t) is None and t.value is not None), reverse=True)
    out: dict[str, Any] = dict(best.user_attrs.get("metrics") or {}) if best is not None else {}
    out.update({
        "hpo/best_trial": best.number if best is not None else None,
        "hpo/best_value": best.value if best is not None else None,
        "hpo/median_value": useful_values[len(useful_values) // 2] if useful_values else None,
        "hpo/target_trials": n_trials,
        "hpo/n_trials": len(finished),
        "hpo/n_complete": sum(t.state == TrialState.COMPLETE for t in finished),
        "hpo/n_pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "hpo/n_failed": sum(t.state == TrialState.FAIL for t in finished),
        "hpo/n_useful": len(finished) - summary["n_wasted"],
        "hpo/wasted_fraction": summary["wasted_fraction"],
        "hpo/total_epochs": sum(int((t.user_attrs.get("info") or {}).get("epochs") or 0) for t in finished),
        "hpo/trial_seconds": total_s,
        "hpo/tracking_overhead": tracking_s / total_s if total_s > 0 else 0.0,
        "hpo/coverage": coverage,
    })
    for reason in waste.REASONS:
        out[f"hpo/wasted/{reason}"] = summary["fraction"][reason]
        out[f"hpo/wasted_count/{reason}"] = summary["count"][reason]
    return out


def _plots(study: optuna.Study, folder: Path) -> tuple[list[Path], dict[str, float]]:
    """The parent run's ``plots/`` artifacts (``training.search.plots``: a PNG of the optimisation
    history, parameter importances and parallel coordinates, and one interactive HTML page of the
    three) and Optuna's default (PED-ANOVA) importances. A plot that cannot be drawn yet is
    skipped with a warning, never fails the study."""
    files = study_plots.write_all(study, folder)
    importances: dict[str, float] = {}
    found = param_importance(study)
    if found["available"]:
        importances = found["importances"]
    else:
        log.warning("no parameter importances yet: %s", found["reason"])
    return files, importances


def finalize_study(handle: Any, n_trials: int, *, plots: bool = True, status: str = "FINISHED") -> StudyResult:
    """Summarise the study into the parent run and return what the outputs are written from."""
    study, tracking, spec = handle.study, handle.tracking, handle.spec
    trials = study.get_trials(deepcopy=False)
    best = select_best(trials)
    coverage = handle.engine.tracker.from_trials(trials)
    study.set_user_attr("coverage", coverage.to_json())  # a record; the source of truth is the trials
    metrics = study_metrics(trials, n_trials, best, coverage.overall)
    with tempfile.TemporaryDirectory() as tmp:
        files, importances = _plots(study, Path(tmp)) if plots else ([], {})
        parent_metrics = {k: v for k, v in metrics.items()
                          if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))}
        parent_metrics.update({f"importance/{k}": v for k, v in importances.items()})
        parent_metrics.update({f"best/{k}": v for k, v in (best.user_attrs.get("metrics") or {}).items()}
                              if best is not None else {})
        tags = {"best_trial": str(best.number) if best else "none",
                "best_run_id": (best.user_attrs.get(RUN_ATTR) or "") if best else "",
                "wasted_fraction": f"{metrics['hpo/wasted_fraction']:.4f}"}
        summary = {"metrics": metrics, "wasted": waste.summarize(trials), "importances": importances,
                   "best_params": best.params if best else None}
        tracking.finish_parent(status, parent_metrics, tags, artifacts=[("plots", p) for p in files],
                               dicts={"summary.json": summary, "coverage.json": coverage.to_json()},
                               texts={"coverage.md": coverage.to_markdown()})
    if best is None:
        counts = waste.summarize(trials)["count"]
        raise TierHpoError(
            f"study {study.study_name} has no useful trial yet ({len(waste.counted(trials))} finished; wasted: "
            + ", ".join(f"{k}={v}" for k, v in counts.items() if v) + "); run more trials or widen the space"
        )
    info = best.user_attrs.get("info") or {}
    if not info.get("checkpoint"):
        raise TierHpoError(f"best trial {best.number} of {study.study_name} has no checkpoint in MLflow; "
                           "was it run with checkpoints disabled?")
    best_doc = {
        "study_name": study.study_name, "storage": redact(handle.storage_url),
        "tier": spec.tier, "budget": spec.budget, "budget_params": parse_budget(spec.budget),
        "horizon": spec.horizon, "seed": spec.seed, "symbol": spec.symbol,
        "trial_number": best.number, "value": best.value,
        "mlflow_run_id": best.user_attrs.get(RUN_ATTR), "parent_run_id": tracking.parent_run_id,
        "experiment_id": tracking.experiment_id, "checkpoint_artifact": CHECKPOINT_ARTIFACT,
        "params": best.params, "model_config": info.get("model_config"), "train_config": info.get("train_config"),
        "n_params": info.get("n_params"), "metrics": best.user_attrs.get("metrics") or {},
        "context_len": spec.context_len, "n_features": spec.n_features,
        "raw_version": provenance.raw_version(), "tier_version": spec.tier_version,
        "git_commit": provenance.git_commit(),
    }
    return StudyResult(study.study_name, redact(handle.storage_url), best_doc, metrics, trial_rows(trials),
                       best.user_attrs.get(RUN_ATTR), tracking.parent_run_id, tracking.experiment_id,
                       tracking.uri, importances, study_document(study, waste.counted(trials)))


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow download progress bar in the middle of the stage's own output."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


# Wall-clock figures differ between two identical runs. They go to the MLflow parent run only, never
# to the DVC metrics file, so a tag and its from-scratch reproduction have identical `dvc metrics`.
WALL_CLOCK = ("hpo/trial_seconds", "hpo/tracking_overhead")


def dvc_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in WALL_CLOCK}


def write_outputs(result: StudyResult, out_dir: Path) -> dict[str, Path]:
    """Write the outputs (model.pt, trials.csv, metrics.json, study.json, best.json), each atomically;
    ``best.json`` last, so it never points at stale files."""
    import pandas as pd
    import torch

    from common import store_init

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        try:
            local = store_init.mlflow_client(result.tracking_uri).download_artifacts(result.best_run_id, CHECKPOINT_ARTIFACT, tmp)
        except Exception as exc:
            raise TierHpoError(f"cannot fetch {CHECKPOINT_ARTIFACT} of run {result.best_run_id} from "
                               f"{result.tracking_uri}: {str(exc).splitlines()[0]}") from None
        torch.load(local, weights_only=True, map_location="cpu")  # refuse anything but plain tensors
        atomic.write_with(out_dir / "model.pt", lambda p: shutil.copyfile(local, p))
    atomic.write_with(out_dir / "trials.csv", lambda p: pd.DataFrame(result.rows).to_csv(p, index=False))
    atomic.write_json(out_dir / "metrics.json", dvc_metrics(result.metrics))
    names = ["best.json", "model.pt", "metrics.json", "trials.csv"]
    if result.document is not None:
        atomic.write_json(out_dir / STUDY_JSON, result.document)
        names.append(STUDY_JSON)
    atomic.write_json(out_dir / "best.json", result.best)
    return {name: out_dir / name for name in names}
