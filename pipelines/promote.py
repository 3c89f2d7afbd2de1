"""``tierhpo promote``: calibrate, test once, and register each budget's best model in the MLflow registry.

Per budget, from the study's ``best.json`` and ``model.pt``:

1. Validation: the checkpoint's validation logits must reproduce the study's recorded ``val/auc``
   (else the tier data changed under the study, and promotion stops). Degeneracy is judged here,
   with the ``metrics`` section's thresholds (the same rule the HPO uses).
2. Calibration: :func:`evaluation.calibration.choose_calibrator` on the validation logits only.
3. Test, exactly once: after every choice is made, the test split is predicted once; metrics
   before and after calibration, and a 95 % AUC interval from ``evaluation.stats.auc_interval``
   (stationary block bootstrap over test days by default: labels of neighbouring days overlap,
   so an iid interval such as DeLong's would be too narrow).
   The model is the study's *seed ensemble* (``refit.pt``: the best configuration retrained with
   fresh seeds, their mean logit), the same seeds ``tierhpo select`` judges; a study without a
   refit falls back to its best trial's ``model.pt``. Each member must reproduce its recorded val/auc.
4. Registration as a new version of the cell's model ``tierhpo-{SYMBOL}-{tier}-h{horizon}-{budget}``
   (a pyfunc from ``training/serving.py``), with a short set of version tags (symbol, cell,
   study, provenance, calibrator, headline metrics); the baseline comparison is written into the
   version *description*. A degenerate model is never registered. Promotion decides no alias:
   the one champion per symbol and horizon is chosen across the whole grid by ``tierhpo select``
   (``tierhpo-{SYMBOL}-h{horizon}@candidate`` / ``@champion``). The symbol is in every name, so
   another symbol's promotions never add versions to these models.
5. Idempotence: every version carries ``source_key`` (study name, trial number and the SHA-256
   of ``model.pt``). Re-running finds that version instead of registering a duplicate; the gate is
   evaluated again (it may move the alias if an earlier run stopped before doing so).

Outputs per budget in ``paths.promote_dir(tier, h) / budget``: ``summary.json``, ``metrics.json``
(numbers only, for ``dvc metrics``), ``predictions.parquet`` (``date, y, p_raw, p_cal`` on the
test split) and ``reliability.png``; all logged to a ``promote-{budget}`` MLflow run.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer

from common import atomic, config, paths, provenance, store_init
from common.errors import TierHpoError
from common.mlflow_runs import create_stage_run
from evaluation.calibration import CalibrationConfig
from training import baseline_record
from training.study_record import Study, check_study_horizon, load_data, read_study, resolve_budgets

STAGE = "promote"
BASELINES = baseline_record.NAMES
CI_METHODS = ("stationary", "circular", "delong")
app = typer.Typer(add_completion=False)


@dataclass
class PromoteConfig:
    """``params.yaml`` section ``promote``."""

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    ci_method: str = "stationary"  # evaluation.stats: stationary | circular block bootstrap, or delong (iid)
    ci_alpha: float = 0.05
    ci_reps: int = 2000
    ci_seed: int = 0
    val_auc_tolerance: float = 0.005  # |recomputed - recorded| val/auc allowed (GPU bf16 vs CPU fp32)
    budgets: list[str] = field(default_factory=list)  # empty = the hpo section's budgets

    def __post_init__(self) -> None:
        if self.ci_method not in CI_METHODS:
            raise TierHpoError(f"promote.ci_method must be one of {list(CI_METHODS)}, got {self.ci_method!r}")
        if not 0 < self.ci_alpha < 1 or self.ci_reps < 100:
            raise TierHpoError("promote.ci_alpha must be in (0, 1) and promote.ci_reps >= 100")
        if self.val_auc_tolerance < 0:
            raise TierHpoError("promote.val_auc_tolerance must be >= 0")


def model_name(symbol: str, tier: str, horizon: int, budget: str) -> str:
    """The cell's registered model; the symbol keeps symbols (and their data) from sharing a model."""
    return f"tierhpo-{symbol}-{tier}-h{horizon}-{budget}"


def study_symbol(study: Study) -> str:
    from training.dataset import load_data_config

    return str(study.best.get("symbol") or load_data_config().symbol)


def metrics_rules() -> dict[str, Any]:
    """ECE bins and degeneracy thresholds from the shared ``metrics`` section (the HPO's rule)."""
    from evaluation.metrics import MetricsParams

    params = config.load_params()
    m = config.build(MetricsParams, params["metrics"], where="metrics") if params.get("metrics") else MetricsParams()
    return {"ece_bins": m.ece_bins, "pred_std_min": m.pred_std_min, "skill_min": m.skill_min}


def read_baselines(tier: str, horizon: int) -> dict[str, dict[str, float]]:
    return baseline_record.read_metrics(tier, horizon)


def source_key(study: Study) -> str:
    """What makes two promotions the same model: study, trial and the exact weights."""
    digest = hashlib.sha256(study.weights_path.read_bytes()).hexdigest()[:16]
    return f"{study.best['study_name']}|trial-{study.best['trial_number']}|{digest}"


# ---------------------------------------------------------------------------- evaluation (pure)


@dataclass
class Evaluation:
    """Everything promotion learns about one budget's model before touching the registry."""

    val: dict[str, float]
    degenerate: str | None
    choice: Any  # evaluation.calibration.CalibrationChoice
    test_raw: dict[str, float]
    test_cal: dict[str, float]
    auc_ci: dict[str, Any]
    test_frame: pd.DataFrame  # date, y, p_raw, p_cal


def evaluate(study: Study, data: Any, cfg: PromoteConfig, rules: dict[str, Any]) -> Evaluation:
    """Validation checks, calibrator choice, then the one and only test evaluation."""
    from scipy.special import expit

    from evaluation.auc import rank_auc
    from evaluation.calibration import choose_calibrator
    from evaluation.metrics import classification_metrics, degeneracy
    from evaluation.stats import auc_interval
    from training.inference import predict_logits

    model_cfg, members = study.model_config(), study.members()
    base_rate = data.base_rate
    y_val = data.labels_of("val")
    member_val = []
    for state, recorded in members:
        logits = predict_logits(model_cfg, state, data, "val")
        got = float(rank_auc(y_val, logits))
        if recorded is not None and abs(got - recorded) > cfg.val_auc_tolerance:
            raise TierHpoError(
                f"{study.budget}: {study.weights_path.name} gives val/auc {got:.4f} but the study recorded "
                f"{recorded:.4f}; the tier data changed since the study, rerun: tierhpo hpo --tier {study.tier} "
                f"--budget {study.budget} --horizon {study.horizon}")
        member_val.append(logits)
    val_logits = np.mean(member_val, axis=0)  # the seed ensemble: mean logit (training/serving.py)
    val = classification_metrics(y_val, expit(val_logits), "val", base_rate, rules["ece_bins"])
    degenerate = degeneracy(val, "val", rules["pred_std_min"], rules["skill_min"])
    choice = choose_calibrator(val_logits, y_val, cfg.calibration)

    # ---- the test split, once: nothing below feeds back into a choice
    test_logits = np.mean([predict_logits(model_cfg, state, data, "test") for state, _ in members], axis=0)
    y_test = data.labels_of("test")
    p_raw, p_cal = expit(test_logits), choice.calibrator.apply(test_logits)
    test_raw = classification_metrics(y_test, p_raw, "test", base_rate, rules["ece_bins"])
    test_cal = classification_metrics(y_test, p_cal, "test", base_rate, rules["ece_bins"])
    auc_ci = auc_interval(y_test, p_raw, cfg.ci_alpha, method=cfg.ci_method, horizon=study.horizon,
                          reps=cfg.ci_reps, seed=cfg.ci_seed)
    if choice.calibrator.method != "isotonic" and abs(test_cal["test/auc"] - test_raw["test/auc"]) > 1e-9:
        raise AssertionError(f"a strictly monotone calibrator changed the test AUC: {test_raw['test/auc']} -> "
                             f"{test_cal['test/auc']}")
    frame = pd.DataFrame({"date": pd.to_datetime(data.dates[data.split_ends["test"]]), "y": y_test.astype(np.int64),
                          "p_raw": p_raw, "p_cal": p_cal})
    return Evaluation(val, degenerate, choice, test_raw, test_cal, auc_ci, frame)


# ---------------------------------------------------------------------------- registry


def version_tags(study: Study, ev: Evaluation, baselines: dict[str, dict[str, float]], key: str) -> dict[str, str]:
    """A short set of tags (what the registry UI filters on); the rest lives in ``summary.json``."""
    b = study.best
    return {
        "symbol": study_symbol(study), "tier": study.tier, "budget": study.budget, "horizon": str(study.horizon),
        "n_params": str(b["n_params"]), "study_name": b["study_name"], "trial_number": str(b["trial_number"]),
        "source_run_id": b["mlflow_run_id"], "git_commit": str(b.get("git_commit", "unknown")),
        "raw_version": str(study.raw_version or "unknown"), "source_key": key,
        "calibrator": ev.choice.calibrator.method,
        "val/auc": f"{ev.val['val/auc']:.6g}", "test/auc": f"{ev.test_raw['test/auc']:.6g}",
        "test/auc_ci_lo": f"{ev.auc_ci['lo']:.6g}", "test/auc_ci_hi": f"{ev.auc_ci['hi']:.6g}",
    }


def baseline_decision(val_auc: float, baselines: dict[str, dict[str, float]]) -> str:
    """The cell against the best baseline on validation, in words (a note; ``tierhpo select`` gates)."""
    best = max(BASELINES, key=lambda n: baselines[n]["val/auc"])
    base_auc = baselines[best]["val/auc"]
    rel = "not worse than" if val_auc >= base_auc else "worse than"
    return (f"val/auc {val_auc:.4f} is {rel} the best baseline {best} ({base_auc:.4f}) on validation; the champion "
            "of the symbol and horizon is chosen across the grid by `tierhpo select`")


def find_version(client: Any, name: str, key: str) -> Any | None:
    found = client.search_model_versions(f"name = '{name}' and tags.source_key = '{key}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register(study: Study, ev: Evaluation, baselines: dict[str, dict[str, float]], data: Any,
             client: Any, workdir: Path) -> dict[str, Any]:
    """Register (or find) the version and describe the baseline comparison; returns the registry part of the summary."""
    import mlflow

    from training.serving import ServingSpec, model_kwargs

    symbol = study_symbol(study)
    name = model_name(symbol, study.tier, study.horizon, study.budget)
    key = source_key(study)
    if ev.degenerate:
        return {"name": name, "version": None, "registered": False, "existing": False, "alias": None,
                "decision": f"not registered: degenerate model ({ev.degenerate})", "source_key": key}
    existing = find_version(client, name, key)
    if existing is None:
        spec = ServingSpec(
            model_config=study.best["model_config"], feature_names=list(data.feature_names),
            mean=[float(v) for v in data.mean], std=[float(v) for v in data.std], context_len=data.context_len,
            calibrator=ev.choice.calibrator.to_dict(),
            info={"tier": study.tier, "budget": study.budget, "horizon": study.horizon,
                  "study_name": study.best["study_name"], "trial_number": study.best["trial_number"]},
        )
        info = mlflow.pyfunc.log_model(name=name, **model_kwargs(spec, study.weights_path, workdir))
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, tags={"symbol": symbol, "tier": study.tier,
                                                       "horizon": str(study.horizon), "budget": study.budget},
                                           description=f"{symbol}: best {study.budget} model of tier {study.tier}, "
                                                       f"horizon {study.horizon}: calibrated probabilities.")
        version = mlflow.register_model(info.model_uri, name, tags=version_tags(study, ev, baselines, key)).version
    else:
        version = existing.version
    why = baseline_decision(ev.val["val/auc"], baselines)
    client.update_model_version(name, str(version), description=why)
    return {"name": name, "version": int(version), "registered": existing is None, "existing": existing is not None,
            "alias": None, "decision": why, "source_key": key}


# ---------------------------------------------------------------------------- outputs


def summary_document(study: Study, ev: Evaluation, baselines: dict[str, Any], registry: dict[str, Any],
                     run_id: str) -> dict[str, Any]:
    b = study.best
    best_baseline = max(BASELINES, key=lambda n: baselines[n]["val/auc"])
    return {
        "tier": study.tier, "horizon": study.horizon, "budget": study.budget, "budget_params": b.get("budget_params"),
        "n_params": b["n_params"], "study_name": b["study_name"], "trial_number": b["trial_number"],
        "source_run_id": b["mlflow_run_id"], "git_commit": b.get("git_commit"), "raw_version": study.raw_version,
        "val": ev.val, "val_auc_recorded": study.val_auc, "degenerate": ev.degenerate,
        "calibrator": {"method": ev.choice.calibrator.method, "params": ev.choice.calibrator.params,
                       "reason": ev.choice.reason, "val_log_loss": ev.choice.val_log_loss,
                       "skipped": ev.choice.skipped, "n_val": ev.choice.n_val},
        "calibrator_reason": ev.choice.reason,
        "test": {"uncalibrated": ev.test_raw, "calibrated": ev.test_cal, "auc_ci": ev.auc_ci,
                 "ece": "L1 ECE of the positive-class probability, equal-width bins (evaluation.metrics)"},
        "test_evaluations": 1,
        "baselines": {**baselines, "best_on_val": best_baseline},
        "registry": registry,
        "mlflow_run_id": run_id,
        "promote_git_commit": provenance.git_commit(),
    }


def metrics_document(summary: dict[str, Any]) -> dict[str, Any]:
    """Numbers only, for ``dvc metrics show``/``diff``: results of the model, not registry state.

    The version number and the alias depend on what the registry held before this run, so a
    tag's from-scratch reproduction in fresh stores would differ; they stay in ``summary.json``.
    """
    cal, raw, ci = summary["test"]["calibrated"], summary["test"]["uncalibrated"], summary["test"]["auc_ci"]
    out = {"val/auc": summary["val"]["val/auc"], "test/auc": raw["test/auc"], "test/auc_lo": ci["lo"],
           "test/auc_hi": ci["hi"]}
    for name in ("brier", "log_loss", "ece", "log_loss_skill"):
        out[f"test/{name}"] = cal[f"test/{name}"]
        out[f"test/{name}_uncalibrated"] = raw[f"test/{name}"]
    return out


def write_budget_outputs(directory: Path, summary: dict[str, Any], ev: Evaluation, rules: dict[str, Any]) -> None:
    from evaluation.plots import reliability_diagram

    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / "summary.json", summary)
    atomic.write_json(directory / "metrics.json", metrics_document(summary))
    atomic.write_with(directory / "predictions.parquet", lambda p: ev.test_frame.to_parquet(p, index=False))
    method = ev.choice.calibrator.method
    reliability_diagram(ev.test_frame["y"], {"raw": ev.test_frame["p_raw"], f"calibrated ({method})": ev.test_frame["p_cal"]},
                        directory / "reliability.png", n_bins=rules["ece_bins"],
                        title=f"{summary['tier']} {summary['budget']} h{summary['horizon']}: test reliability")


def promote_budget(study: Study, data: Any, cfg: PromoteConfig, rules: dict[str, Any],
                   baselines: dict[str, dict[str, float]], out: Path) -> dict[str, Any]:
    """Evaluate and register one budget, write its outputs into ``out`` and log them to a ``promote-{budget}`` run."""
    import mlflow

    client = store_init.mlflow_client(paths.mlflow_tracking_uri())
    ev = evaluate(study, data, cfg, rules)
    run = create_stage_run(client, study.best["experiment_id"], STAGE, f"{STAGE}-{study.budget}", {
        "tier": study.tier, "horizon": str(study.horizon), "budget": study.budget,
        "study_name": study.best["study_name"], "trial_number": str(study.best["trial_number"]),
        "source_run_id": study.best["mlflow_run_id"]})
    with (paths.mlflow_fluent_tracking(), mlflow.start_run(run_id=run.info.run_id),
          tempfile.TemporaryDirectory(prefix="tierhpo-model-") as staging):
        # The model first: MLflow 3 links every metric already in the run to a newly logged model,
        # one history query per metric.
        registry = register(study, ev, baselines, data, client, Path(staging))
        mlflow.log_params({"calibrator": ev.choice.calibrator.method, "ci_method": cfg.ci_method,
                           "ci_reps": cfg.ci_reps, "n_params": study.best["n_params"]})
        mlflow.log_metrics({k: v for k, v in {**ev.val, **ev.test_cal}.items() if math.isfinite(v)})
        mlflow.log_metrics({f"{k}_uncalibrated": v for k, v in ev.test_raw.items() if math.isfinite(v)})
        mlflow.log_metrics({"test/auc_ci_lo": ev.auc_ci["lo"], "test/auc_ci_hi": ev.auc_ci["hi"]})
        mlflow.set_tags({"registry_decision": registry["decision"][:4000],
                         "registered_version": str(registry["version"])})
        summary = summary_document(study, ev, baselines, registry, run.info.run_id)
        write_budget_outputs(out, summary, ev, rules)
        mlflow.log_artifacts(str(out), artifact_path=STAGE)
    return summary


def run_promote(tier: str, horizon: int, budgets: list[str], cfg: PromoteConfig, data: Any) -> dict[str, dict[str, Any]]:
    """Promote every budget, then move the outputs of all of them into ``paths.promote_dir``."""
    studies = {b: read_study(tier, b, horizon) for b in budgets}  # fail fast, before any work
    baselines = read_baselines(tier, horizon)
    rules = metrics_rules()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tierhpo-promote-") as tmp:
        for budget, study in studies.items():
            results[budget] = promote_budget(study, data, cfg, rules, baselines, Path(tmp) / budget)
        root = paths.promote_dir(tier, horizon)
        for budget in results:
            with atomic.atomic_path(root / budget) as target:
                shutil.copytree(Path(tmp) / budget, target)
    return results


@app.command()
def main(
    tier: str = typer.Option(..., help="Feature tier, e.g. a50."),
    horizon: int = typer.Option(..., help="Prediction horizon in days."),
    budgets: str = typer.Option(None, help="Comma-separated budgets (default: promote.budgets, else hpo.budgets)."),
) -> None:
    """Calibrate each budget's best model, test it once with a 95 % AUC CI, and register it (no alias: see select)."""
    from training.dataset import check_tier, load_data_config

    check_tier(tier, load_data_config().tiers)
    check_study_horizon(tier, horizon)
    cfg = config.load(PromoteConfig, "promote")
    chosen = resolve_budgets(budgets.split(",") if budgets else cfg.budgets)
    data = load_data(read_study(tier, chosen[0], horizon))
    results = run_promote(tier, horizon, chosen, cfg, data)
    for budget, s in results.items():
        ci = s["test"]["auc_ci"]
        typer.echo(f"{budget}: test AUC {ci['auc']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}], calibrator "
                   f"{s['calibrator']['method']}; {s['registry']['decision']}"
                   + (f" (version {s['registry']['version']})" if s["registry"]["version"] else ""))
    typer.echo(f"wrote {paths.promote_dir(tier, horizon)}")
