"""Per (tier, horizon) analysis sections, pure functions of ``inputs.HorizonInputs``: HPO results,
coverage and importance per study, HP consistency beside the cross-budget matrix, the per-tier
scaling test, calibration and baselines. JSON-ready dicts; the grid's verdicts are in ``grid``."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from common.errors import TierHpoError
from evaluation import scaling, stats
from pipelines.report.inputs import HorizonInputs, Missing, Study
from pipelines.report.params import MIN_IMPORTANCE_TRIALS, ReportParams
from training.search import analysis as hpo_analysis


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def shared_test_days(promote: dict[str, dict[str, Any]], column: str = "p_raw") -> pd.DataFrame:
    """One row per test day shared by every budget: ``date``, ``y`` and one score column per budget.

    AUC uses the raw (uncalibrated) probabilities: calibration is monotone, but isotonic
    regression creates ties that would blur a comparison of the networks themselves.
    """
    merged: pd.DataFrame | None = None
    for budget, part in promote.items():
        frame = part["predictions"][["date", "y", column]].rename(columns={column: budget, "y": f"y_{budget}"})
        if frame["date"].duplicated().any():
            raise TierHpoError(f"promotion predictions of {budget} repeat a test day; rerun promote")
        merged = frame if merged is None else merged.merge(frame, on="date", how="inner")
    assert merged is not None
    if merged.empty:
        raise TierHpoError("the budgets' promotion predictions share no test day; rerun promote for every budget")
    label_cols = [c for c in merged.columns if c.startswith("y_")]
    labels = merged[label_cols].to_numpy()
    if not (labels == labels[:, :1]).all():
        raise TierHpoError("the budgets' test labels disagree on the same days; rerun promote for every budget")
    merged = merged.assign(y=labels[:, 0]).drop(columns=label_cols)
    return merged.sort_values("date").reset_index(drop=True)


def scaling_section(inputs: HorizonInputs, cfg: ReportParams) -> dict[str, Any]:
    if isinstance(inputs.promote, Missing):
        return unavailable(inputs.promote.line())
    if len(inputs.studies) < 2:
        return unavailable(f"one budget only ({inputs.studies[0].budget}); scaling needs at least two")
    scores = shared_test_days(inputs.promote)
    n_days = {b: len(p["predictions"]) for b, p in inputs.promote.items()}
    try:
        result = scaling.scaling_verdict(
            scores["y"].to_numpy(), {s.budget: scores[s.budget].to_numpy() for s in inputs.studies},
            {s.budget: s.n_params for s in inputs.studies}, cfg.alpha, method=cfg.method, horizon=inputs.horizon,
            block_length=cfg.block_length, reps=cfg.bootstrap_reps, seed=cfg.seed,
            min_power_law_points=cfg.min_power_law_points,
        )
    except ValueError as exc:
        raise TierHpoError(f"scaling verdict for {inputs.tier} h{inputs.horizon}: {exc}") from None
    result["available"] = True
    result["days_per_budget"] = n_days
    result["first_day"], result["last_day"] = str(scores["date"].min())[:10], str(scores["date"].max())[:10]
    return result


def baselines_section(inputs: HorizonInputs, cfg: ReportParams) -> dict[str, Any]:
    if isinstance(inputs.baselines, Missing):
        return unavailable(inputs.baselines.line())
    preds = inputs.baselines["predictions"]
    test = preds[preds["split"] == "test"].sort_values("date")
    if test.empty:
        raise TierHpoError(f"baseline predictions for {inputs.tier} h{inputs.horizon} have no test rows; rerun baselines")
    common = dict(method=cfg.method, horizon=inputs.horizon, block_length=cfg.block_length,
                  reps=cfg.bootstrap_reps, seed=cfg.seed)
    rows = {}
    names = inputs.baselines["names"]
    for name in names:
        try:
            ci = stats.auc_interval(test["y"].to_numpy(), test[name].to_numpy(), cfg.alpha, **common)
        except ValueError as exc:
            raise TierHpoError(f"baseline {name} for {inputs.tier} h{inputs.horizon}: {exc}") from None
        val = inputs.baselines["metrics"].get(name, {}).get("val/auc")
        rows[name] = {"val_auc": val, **_ci_fields(ci)}
    out: dict[str, Any] = {"available": True, "n_test_days": len(test), "baselines": rows, "comparisons": []}
    if isinstance(inputs.promote, Missing):
        out["comparisons_reason"] = inputs.promote.line()
        return out
    transformer = shared_test_days(inputs.promote)
    joined = transformer.merge(test[["date", "y", *names]].rename(columns={"y": "y_base"}), on="date")
    if not (joined["y"] == joined["y_base"]).all():
        raise TierHpoError("baseline and transformer test labels disagree on the same days; rerun baselines and promote")
    comparisons = []
    for s in inputs.studies:
        for name in names:
            d = stats.paired_auc_diff(joined["y"].to_numpy(), joined[s.budget].to_numpy(), joined[name].to_numpy(),
                                      cfg.alpha, **common)
            comparisons.append({"budget": s.budget, "baseline": name, **{k: d[k] for k in
                                ("auc_a", "auc_b", "diff", "lo", "hi", "p_value", "se")}})
    if comparisons:
        from statsmodels.stats.multitest import multipletests

        if cfg.method != "delong":
            try:
                stats.check_resolution(cfg.bootstrap_reps, len(comparisons), cfg.alpha)
            except ValueError as exc:
                raise TierHpoError(f"baseline comparisons for {inputs.tier} h{inputs.horizon}: {exc}") from None

        reject, p_holm, _, _ = multipletests([c["p_value"] for c in comparisons], alpha=cfg.alpha, method="holm")
        for c, rej, ph in zip(comparisons, reject, p_holm, strict=True):
            c["p_holm"], c["significant"] = float(ph), bool(rej)
    out["comparisons"] = comparisons
    out["n_common_days"] = len(joined)
    return out


def _ci_fields(ci: dict[str, Any]) -> dict[str, Any]:
    return {k: ci.get(k) for k in ("auc", "lo", "hi", "se", "n", "block_length")}


def calibration_section(inputs: HorizonInputs) -> dict[str, Any]:
    """Chosen calibrator and test ECE / Brier / log loss before and after, as promote recorded them
    (``summary.json``: ``test.uncalibrated`` and ``test.calibrated``), plus the registry decision."""
    if isinstance(inputs.promote, Missing):
        return unavailable(inputs.promote.line())
    rows = {}
    for s in inputs.studies:
        summary = inputs.promote[s.budget]["summary"]
        test = summary.get("test") or {}
        before, after = test.get("uncalibrated"), test.get("calibrated")
        if not isinstance(before, dict) or not isinstance(after, dict):
            raise TierHpoError(f"promotion summary of {inputs.tier} {s.budget} h{inputs.horizon} lacks test metrics "
                               f"before/after calibration; rerun `tierhpo promote --tier {inputs.tier} "
                               f"--horizon {inputs.horizon}`")
        registry = summary.get("registry") or {}
        rows[s.budget] = {
            "calibrator": _calibrator_name(summary), "why": _calibrator_reason(summary),
            "before": {k: before.get(k) for k in CALIBRATION_METRICS},
            "after": {k: after.get(k) for k in CALIBRATION_METRICS},
            "degenerate": summary.get("degenerate"),
            "registered_model": registry.get("name"), "version": registry.get("version"),
            "alias": registry.get("alias"), "decision": registry.get("decision"),
        }
    return {"available": True, "ece": _ece_text(inputs), "budgets": rows}


CALIBRATION_METRICS = ("test/ece", "test/brier", "test/log_loss")


def _ece_text(inputs: HorizonInputs) -> str:
    assert not isinstance(inputs.promote, Missing)
    first = inputs.promote[inputs.studies[0].budget]["summary"]
    return str((first.get("test") or {}).get("ece") or "L1 ECE of the positive-class probability")


def _calibrator_name(summary: dict[str, Any]) -> str:
    value = summary.get("calibrator")
    if isinstance(value, dict):
        return str(value.get("method") or value.get("name") or "unknown")
    return str(value) if value is not None else "unknown"


def _calibrator_reason(summary: dict[str, Any]) -> str:
    value = summary.get("calibrator")
    why = summary.get("calibrator_reason") or (value.get("reason") if isinstance(value, dict) else None)
    return str(why) if why else ""


def consistency_section(inputs: HorizonInputs) -> dict[str, Any]:
    """Best hyperparameters per budget side by side, and the cross-budget matrix when present."""
    names = sorted({k for s in inputs.studies for k in s.best["params"]})
    table = {name: {s.budget: s.best["params"].get(name) for s in inputs.studies} for name in names}
    varying = [n for n, row in table.items() if len({json.dumps(v, sort_keys=True) for v in row.values()}) > 1]
    out: dict[str, Any] = {
        "budgets": [s.budget for s in inputs.studies],
        "n_params": {s.budget: s.n_params for s in inputs.studies},
        "best_val_auc": {s.budget: s.best["metrics"].get("val/auc") for s in inputs.studies},
        "trial_number": {s.budget: s.best.get("trial_number") for s in inputs.studies},
        "params": table,
        "differ_across_budgets": varying,
    }
    out["cross_budget"] = (unavailable(inputs.cross_budget.line()) if isinstance(inputs.cross_budget, Missing)
                           else {"available": True, **cross_budget_matrix(inputs.cross_budget)})
    return out


def cross_budget_matrix(raw: dict[str, Any]) -> dict[str, Any]:
    """Normalise ``matrix.json`` to budgets (row = whose hyperparameters, column = trained at),
    mean and std arrays, and the transfer verdict per budget."""
    budgets = [str(b) for b in raw.get("budgets", [])]
    mean, std = raw.get("mean"), raw.get("std")
    if not budgets or mean is None:
        raise TierHpoError("cross-budget matrix.json lacks 'budgets' and 'mean'; rerun cross-budget")
    mean_arr = np.array([[np.nan if v is None else v for v in row] for row in mean], dtype=np.float64)
    std_arr = (np.array([[np.nan if v is None else v for v in row] for row in std], dtype=np.float64)
               if std is not None else np.full_like(mean_arr, np.nan))
    if mean_arr.shape != (len(budgets), len(budgets)) or std_arr.shape != mean_arr.shape:
        raise TierHpoError("cross-budget matrix.json: 'mean'/'std' are not budgets x budgets; rerun cross-budget")
    transfer = {b: (v.get("summary") if isinstance(v, dict) else str(v)) for b, v in (raw.get("transfer") or {}).items()}
    return {"budgets": budgets, "mean": _nan_to_none(mean_arr), "std": _nan_to_none(std_arr),
            "transfer": transfer, "n_seeds": raw.get("n_seeds"), "noise_rule": raw.get("noise_rule")}


def _nan_to_none(a: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in a]


def study_section(s: Study, cfg: ReportParams) -> dict[str, Any]:
    importance = hpo_analysis.param_importance(s.study)
    n_complete = sum(t.state == TrialState.COMPLETE for t in s.study.get_trials(deepcopy=False))
    importance["n_trials"] = n_complete
    importance["few_trials"] = n_complete < MIN_IMPORTANCE_TRIALS
    pairs = hpo_analysis.important_pairs(importance["importances"], cfg.coverage_pairs) \
        if importance["available"] else []
    return {
        "budget": s.budget,
        "n_params": s.n_params,
        "study_name": s.best["study_name"],
        "hpo": hpo_analysis.hpo_summary(s.study, top_k=cfg.top_k, tol=cfg.efficiency_tol),
        "coverage": hpo_analysis.coverage_analysis(s.study, bins=cfg.coverage_bins, pairs=pairs),
        "importance": importance,
    }


def analyse(inputs: HorizonInputs, cfg: ReportParams) -> dict[str, Any]:
    """Every number of one (tier, horizon) report, JSON-ready."""
    return {
        "tier": inputs.tier,
        "horizon": inputs.horizon,
        "studies": [study_section(s, cfg) for s in inputs.studies],
        "consistency": consistency_section(inputs),
        "scaling": scaling_section(inputs, cfg),
        "calibration": calibration_section(inputs),
        "baselines": baselines_section(inputs, cfg),
    }
