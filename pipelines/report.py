"""``tierhpo report``: what the search learned, with statistics that separate signal from noise.

For each tier it writes ``reports/<tier>/``:

* ``summary.md``: the human report (sections below), every conclusion worded from a verdict;
* ``report.json``: every number behind it;
* ``metrics.json``: the headline numbers (declared as DVC metrics);
* ``plots/*.png``: optimisation history and coverage per study, scaling, cross-budget heatmap,
  reliability diagrams (declared as DVC plots);

and logs the same files to MLflow as one ``report`` run in the tier's experiment (the one the
HPO studies used), tagged with the git commit and the data version.

Sections per horizon: HPO results, coverage, parameter importance, HP consistency next to the
cross-budget matrix, scaling verdict, calibration, baselines.

Inputs: each study's ``best.json`` (``paths.study_dir``) and its Optuna study (read from
``paths.optuna_storage_url()`` under the name ``best.json`` records), and the outputs of
``cross-budget`` (``matrix.json``), ``promote`` (``<budget>/summary.json`` and
``predictions.parquet``) and ``baselines`` (``metrics.json``, ``predictions.parquet``).

Missing inputs: HPO results are required (no study, no report). The downstream stages are
required too by default, because a report silently missing its scaling verdict is worse than
no report: a missing or incomplete one stops with a one-line error naming the command that
makes it. With ``--partial`` (``report.partial: true``) the report is written anyway and each
section whose input is missing says "Not available" and why.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import typer

from evaluation import plots, stats
from training.search import analysis as hpo_analysis
from common import atomic, config, paths, provenance
from common.errors import TierHpoError, shorten

app = typer.Typer(add_completion=False)

VERDICT_CODE = {stats.MONOTONIC: 1, stats.INCONCLUSIVE: 0, stats.VIOLATED: -1}
BASELINES = ("logreg", "hgb")
BASELINE_NAMES = {"logreg": "logistic regression", "hgb": "gradient boosting"}


@dataclass(frozen=True)
class ReportParams:
    """``params.yaml`` section ``report``."""

    tiers: list[str] = field(default_factory=lambda: ["a50"])  # reported when no --tier / --all
    alpha: float = 0.05  # 1 - confidence of every interval; family-wise level of the paired tests
    method: Literal["stationary", "circular", "delong"] = "stationary"  # see evaluation/stats.py
    bootstrap_reps: int = 2000
    block_length: int | None = None  # None: max(horizon, Politis-White estimate)
    seed: int = 0
    top_k: int = 5
    efficiency_tol: float = 0.005  # "trials until the best was within this of the final best"
    coverage_bins: int = 5  # as hpo.coverage.bins, so the report bins like the sampler
    coverage_pairs: int = 3  # joint coverage for the pairs among the N most important parameters
    min_power_law_points: int = 4
    partial: bool = False  # write the report even when a downstream stage's output is missing

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise TierHpoError(f"report.alpha must be in (0, 0.5), got {self.alpha}")
        if self.bootstrap_reps < 100:
            raise TierHpoError(f"report.bootstrap_reps must be >= 100, got {self.bootstrap_reps}")
        if self.block_length is not None and self.block_length < 1:
            raise TierHpoError(f"report.block_length must be >= 1 or null (automatic), got {self.block_length}")
        if self.coverage_bins < 2:
            raise TierHpoError(f"report.coverage_bins must be >= 2, got {self.coverage_bins}")
        if self.top_k < 1 or self.coverage_pairs < 0 or self.min_power_law_points < 3:
            raise TierHpoError("report: top_k >= 1, coverage_pairs >= 0 and min_power_law_points >= 3 are required")
        if not self.efficiency_tol >= 0:
            raise TierHpoError(f"report.efficiency_tol must be >= 0, got {self.efficiency_tol}")


# ============================================================================ inputs


@dataclass
class Study:
    budget: str
    best: dict[str, Any]
    study: Any  # optuna.Study

    @property
    def n_params(self) -> int:
        return int(self.best["n_params"])


@dataclass
class Missing:
    """A downstream input that is absent: what, and the command that makes it."""

    what: str
    command: str

    def line(self) -> str:
        return f"{self.what}; run `{self.command}`"


@dataclass
class HorizonInputs:
    tier: str
    horizon: int
    studies: list[Study]  # ordered by real parameter count
    promote: dict[str, dict[str, Any]] | Missing  # budget -> {"summary", "predictions"}
    cross_budget: dict[str, Any] | Missing
    baselines: dict[str, Any] | Missing  # {"metrics", "predictions"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TierHpoError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); rerun the stage that wrote it") from None
    if not isinstance(data, dict):
        raise TierHpoError(f"{path} must hold a JSON object")
    return data


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TierHpoError(f"{path} cannot be read ({str(exc).splitlines()[0]}); rerun the stage that wrote it") from None
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise TierHpoError(f"{path} lacks column(s) {lacking}; rerun the stage that wrote it")
    return frame


def discover_tiers(known: list[str]) -> list[str]:
    root = paths.results_dir() / "hpo"
    found = [t for t in known if (root / t).is_dir() and any((root / t).glob("*/h*/best.json"))]
    if not found:
        raise TierHpoError(f"no HPO results under {root} for tiers {known}; run `tierhpo hpo` (or `dvc repro`) first")
    return found


def discover_horizons(tier: str) -> list[int]:
    root = paths.results_dir() / "hpo" / tier
    horizons = sorted({int(p.parent.name[1:]) for p in root.glob("*/h*/best.json") if p.parent.name[1:].isdigit()})
    if not horizons:
        raise TierHpoError(
            f"no HPO results for tier {tier} (no {root}/<budget>/h<h>/best.json); "
            f"run `tierhpo hpo --tier {tier} ...` (or `dvc repro`) first"
        )
    return horizons


def open_storage() -> Any:
    """The HPO's Optuna storage, read-only in spirit: a missing SQLite file is an error, not a new database."""
    import optuna
    from sqlalchemy.engine import make_url

    from common.redact import redact as redact_url
    from training.search.storage import check_storage_reachable, normalize_storage_url

    raw = paths.optuna_storage_url()
    url = normalize_storage_url(raw)
    if url.startswith("sqlite"):
        db = Path(make_url(url).database or "")
        if not db.is_file():
            raise TierHpoError(f"the Optuna storage {redact_url(raw)} does not exist; point TIERHPO_OPTUNA_STORAGE "
                               "at the storage the HPO used")
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}  # an HPO worker may hold the write lock
    else:
        url = check_storage_reachable(url)
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)


def load_studies(tier: str, horizon: int) -> list[Study]:
    import optuna

    from common.redact import redact as redact_url

    root = paths.results_dir() / "hpo" / tier
    best_paths = sorted(root.glob(f"*/h{horizon}/best.json"))
    storage = open_storage() if best_paths else None
    studies = []
    for best_path in best_paths:
        budget = best_path.parent.parent.name
        best = _read_json(best_path)
        for key in ("study_name", "n_params", "params", "metrics"):
            if key not in best:
                raise TierHpoError(f"{best_path} lacks '{key}'; rerun `tierhpo hpo --tier {tier} --budget {budget} "
                                   f"--horizon {horizon}`")
        try:
            study = optuna.load_study(study_name=best["study_name"], storage=storage)
        except KeyError:
            raise TierHpoError(
                f"study '{best['study_name']}' named in {best_path} is not in the Optuna storage "
                f"{redact_url(paths.optuna_storage_url())}; point TIERHPO_OPTUNA_STORAGE at the storage the HPO used"
            ) from None
        studies.append(Study(budget, best, study))
    studies.sort(key=lambda s: (s.n_params, s.budget))
    return studies


def load_promote(tier: str, horizon: int, budgets: list[str], studies: list[Study]) -> dict[str, Any] | Missing:
    root = paths.promote_dir(tier, horizon)
    command = f"tierhpo promote --tier {tier} --horizon {horizon}"
    absent = [b for b in budgets if not (root / b / "summary.json").is_file()
              or not (root / b / "predictions.parquet").is_file()]
    if absent:
        return Missing(f"no promotion results for {tier} h{horizon} budget(s) {absent} under {root}", command)
    out = {}
    for s in studies:
        summary = _read_json(root / s.budget / "summary.json")
        recorded = summary.get("study_name")
        if recorded is not None and recorded != s.best["study_name"]:
            raise TierHpoError(
                f"{root / s.budget / 'summary.json'} promoted study '{recorded}' but the current study is "
                f"'{s.best['study_name']}'; rerun `{command}`"
            )
        preds = _read_parquet(root / s.budget / "predictions.parquet", ("date", "y", "p_raw", "p_cal"))
        out[s.budget] = {"summary": summary, "predictions": preds}
    return out


def load_cross_budget(tier: str, horizon: int) -> dict[str, Any] | Missing:
    path = paths.cross_budget_dir(tier, horizon) / "matrix.json"
    if not path.is_file():
        return Missing(f"no cross-budget matrix for {tier} h{horizon} at {path}",
                       f"tierhpo cross-budget --tier {tier} --horizon {horizon}")
    return _read_json(path)


def load_baselines(tier: str, horizon: int) -> dict[str, Any] | Missing:
    root = paths.baselines_dir(tier, horizon)
    if not (root / "metrics.json").is_file() or not (root / "predictions.parquet").is_file():
        return Missing(f"no baseline results for {tier} h{horizon} under {root}",
                       f"tierhpo baselines --tier {tier} --horizon {horizon}")
    return {"metrics": _read_json(root / "metrics.json"),
            "predictions": _read_parquet(root / "predictions.parquet", ("date", "split", "y", *BASELINES))}


def load_inputs(tier: str, horizon: int, partial: bool) -> HorizonInputs:
    studies = load_studies(tier, horizon)
    budgets = [s.budget for s in studies]
    cross_budget = load_cross_budget(tier, horizon)
    if not isinstance(cross_budget, Missing):
        check_cross_budget_fresh(cross_budget, studies, tier, horizon)
    inputs = HorizonInputs(
        tier, horizon, studies,
        promote=load_promote(tier, horizon, budgets, studies),
        cross_budget=cross_budget,
        baselines=load_baselines(tier, horizon),
    )
    if not partial:
        for part in (inputs.promote, inputs.cross_budget, inputs.baselines):
            if isinstance(part, Missing):
                raise TierHpoError(part.line() + " (or pass --partial to report what exists)")
    return inputs


# ============================================================================ analysis (pure)


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
        result = stats.scaling_verdict(
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
    for name in BASELINES:
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
    joined = transformer.merge(test[["date", "y", *BASELINES]].rename(columns={"y": "y_base"}), on="date")
    if not (joined["y"] == joined["y_base"]).all():
        raise TierHpoError("baseline and transformer test labels disagree on the same days; rerun baselines and promote")
    comparisons = []
    for s in inputs.studies:
        for name in BASELINES:
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


def check_cross_budget_fresh(raw: dict[str, Any], studies: list[Study], tier: str, horizon: int) -> None:
    """The matrix must come from the current studies (``studies[budget].study_name`` in matrix.json)."""
    recorded = raw.get("studies") or {}
    for s in studies:
        name = (recorded.get(s.budget) or {}).get("study_name")
        if name is not None and name != s.best["study_name"]:
            raise TierHpoError(f"the cross-budget matrix of {tier} h{horizon} was computed from study '{name}', "
                               f"not the current '{s.best['study_name']}'; rerun `tierhpo cross-budget --tier {tier} "
                               f"--horizon {horizon}`")


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


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``dvc metrics diff`` compares: per horizon, per budget, plus the verdict code."""
    out: dict[str, Any] = {}
    for h in report["horizons"]:
        block: dict[str, Any] = {}
        for st in h["studies"]:
            hpo = st["hpo"]
            block[st["budget"]] = {
                "n_params": st["n_params"],
                "val_auc_best": hpo["best"]["value"] if hpo["best"] else None,
                "wasted_fraction": hpo["wasted"]["fraction"],
                "trials_to_within_tol": hpo["efficiency"]["trials_to_within_tol"],
                "coverage": st["coverage"]["overall"],
            }
        sc = h["scaling"]
        if sc["available"]:
            for b in sc["budgets"]:
                block[b["budget"]].update({"test_auc": b["auc"], "test_auc_lo": b["lo"], "test_auc_hi": b["hi"]})
            block["scaling_verdict"] = VERDICT_CODE[sc["verdict"]]
        cal = h["calibration"]
        if cal["available"]:
            for budget, row in cal["budgets"].items():
                block[budget]["test_ece_after"] = row["after"]["test/ece"]
                block[budget]["test_ece_before"] = row["before"]["test/ece"]
        bl = h["baselines"]
        if bl["available"]:
            for name, row in bl["baselines"].items():
                block[name] = {"test_auc": row["auc"], "test_auc_lo": row["lo"], "test_auc_hi": row["hi"]}
        out[f"h{h['horizon']}"] = block
    return out


def mlflow_metrics(head: dict[str, Any]) -> dict[str, float]:
    """Headline numbers as ``{split}/{name}`` MLflow keys, e.g. ``test/auc_h1_20M``."""
    keys = {"val_auc_best": "val/auc_best", "test_auc": "test/auc", "test_auc_lo": "test/auc_lo",
            "test_auc_hi": "test/auc_hi", "test_ece_after": "test/ece", "test_ece_before": "test/ece_uncalibrated",
            "wasted_fraction": "hpo/wasted_fraction",
            "trials_to_within_tol": "hpo/trials_to_within_tol", "coverage": "hpo/coverage"}
    out = {}
    for h, block in head.items():
        for who, values in block.items():
            if who == "scaling_verdict":
                out[f"test/scaling_verdict_{h}"] = float(values)
                continue
            for key, value in values.items():
                if key in keys and value is not None and math.isfinite(float(value)):
                    out[f"{keys[key]}_{h}_{who}"] = float(value)
    return out


# ============================================================================ markdown


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def ci_text(row: dict[str, Any]) -> str:
    return f"{row['auc']:.4f} [{row['lo']:.4f}, {row['hi']:.4f}]"


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def not_available(section: dict[str, Any]) -> list[str]:
    return [f"**Not available**: {section['reason']}.", ""]


SCALING_WORDS = {
    stats.MONOTONIC: "Test AUC rises with the real parameter count at every step, and every step is a "
                     "significant gain (paired, Holm-adjusted). On this test split, larger is better.",
    stats.VIOLATED: "A larger model is significantly worse than a smaller one on the same test days "
                    "(paired, Holm-adjusted). On this test split, scaling is violated.",
    stats.INCONCLUSIVE: "The data cannot order these budgets: no larger model is significantly worse, but not every "
                        "step up is a significant gain. Differences between point estimates below are within "
                        "noise and must not be read as a trend.",
}


def render_markdown(report: dict[str, Any]) -> str:
    tier = report["tier"]
    lines = [f"# tierhpo report: tier {tier}", "",
             f"Generated from git commit `{report['git_commit']}`, data version `{report['data_version']}`. "
             f"Intervals are {100 * (1 - report['params']['alpha']):.0f} % ({_method_text(report['params'])}); "
             "paired comparisons use the same test days for both models.", ""]
    for h in report["horizons"]:
        lines += render_horizon(h, report["params"])
    return "\n".join(lines).rstrip() + "\n"


def _method_text(p: dict[str, Any]) -> str:
    if p["method"] == "delong":
        return "DeLong, iid: it understates the variance when labels overlap (horizon > 1)"
    block = f"block length {p['block_length']}" if p["block_length"] else "block length max(horizon, Politis-White)"
    return f"{p['method']} block bootstrap over test days, {p['bootstrap_reps']} resamples, {block}, seed {p['seed']}"


def render_horizon(h: dict[str, Any], p: dict[str, Any]) -> list[str]:
    tag = f"h{h['horizon']}"
    lines = [f"## Horizon {h['horizon']}", ""]
    lines += ["### HPO results", ""]
    rows = []
    for st in h["studies"]:
        hpo = st["hpo"]
        wasted = hpo["wasted"]
        comp = hpo["compute"]
        eff = hpo["efficiency"]
        rows.append([
            st["budget"], f"{st['n_params']:,}", hpo["n_trials"],
            fmt(hpo["best"]["value"]) if hpo["best"] else "n/a", fmt(hpo["median"]),
            ", ".join(f"{t['value']:.4f}" for t in hpo["top"]) or "n/a",
            ", ".join(f"{k} {v}" for k, v in hpo["by_state"].items()),
            _pct(wasted["fraction"]),
            fmt(comp["seconds"]["mean"], 1), fmt(comp["seconds"]["total"], 0), fmt(comp["epochs"]["total"], 0),
            f"{eff['trials_to_within_tol']} of {eff['n_trials']}" if eff["trials_to_within_tol"] else "n/a",
        ])
    tol = p["efficiency_tol"]
    lines += md_table(["budget", "real params", "trials", "best val AUC", "median", f"top {p['top_k']}", "states",
                       "wasted", "s/trial", "total s", "epochs", f"trials to within {tol} of best"], rows)
    for st in h["studies"]:
        wasted = st["hpo"]["wasted"]
        if wasted["by_reason"]:
            reasons = ", ".join(f"{r}: {v['count']} ({v['fraction']:.1%})" for r, v in wasted["by_reason"].items())
            lines.append(f"- {st['budget']} wasted trials by reason: {reasons}; "
                         f"{_pct(wasted['seconds_fraction'])} of the compute time.")
        else:
            lines.append(f"- {st['budget']}: no wasted trial among {wasted['n_finished']} finished.")
        if wasted["fail_reasons"]:
            lines.append("  Failures: " + "; ".join(f"{r} x{c}" for r, c in wasted["fail_reasons"].items()) + ".")
        phases = ", ".join(f"{k} {v}" for k, v in st["hpo"]["by_phase"].items())
        best_phase = ", ".join(f"{k} {v:.4f}" for k, v in st["hpo"]["best_by_phase"].items())
        lines.append(f"- {st['budget']} trials by phase: {phases}; best val AUC by phase: {best_phase or 'n/a'}.")
        lines.append(f"  ![optimisation history {st['budget']}](plots/{tag}_{st['budget']}_history.png)")
    lines += ["", "The best validation AUC of a search is optimistically biased (it is the maximum over many "
              "trials); the test AUCs under *Scaling* are the unbiased numbers.", ""]

    lines += ["### Coverage", ""]
    for st in h["studies"]:
        cov = st["coverage"]
        lines.append(f"**{st['budget']}**: {cov['n_explored']} explored trials ({cov['n_tpe']} chosen by TPE); "
                     f"mean coverage over parameters and pairs {_pct(cov['overall'])} of reachable bins "
                     f"({cov['bins']} bins per continuous axis, one per value for small discrete ones).")
        lines.append("")
        rows = []
        for name, e in cov["params"].items():
            focus = e.get("tpe_focus")
            rows.append([name, _pct(e["fraction"]), ", ".join(e["empty"]) or "none",
                         ", ".join(e["unreachable"]) or "-",
                         f"{focus['bin']} ({focus['share']:.0%} of TPE trials, {focus['vs_uniform']:.1f}x uniform)"
                         if focus else "no TPE trials"])
        lines += md_table(["parameter", "bins explored", "never explored", "unreachable at this budget",
                           "TPE concentrated in"], rows)
        for pair in cov["pairs"]:
            empty = pair["empty"]
            lines.append(f"- pair {pair['params'][0]} x {pair['params'][1]} ({cov['pairs_from']}): "
                         f"{_pct(pair['fraction'])} of {pair['n_reachable']} reachable cells explored; "
                         f"{len(empty)} never explored" + (f" (e.g. {'; '.join(empty[:4])})" if empty else "") + ".")
        if cov["tpe_concentrated"]:
            lines.append(f"- TPE put at least half of its trials into one bin of: {', '.join(cov['tpe_concentrated'])}.")
        lines += [f"![coverage {st['budget']}](plots/{tag}_{st['budget']}_coverage.png)"]
        lines += [f"![coverage {st['budget']} {p['params'][0]} x {p['params'][1]}]"
                  f"(plots/{pair_plot_name(tag, st['budget'], *p['params'])})" for p in cov["pairs"]]
        lines.append("")

    lines += ["### Parameter importance", ""]
    for st in h["studies"]:
        imp = st["importance"]
        if imp["available"]:
            ranked = ", ".join(f"{k} {v:.2f}" for k, v in imp["importances"].items())
            lines.append(f"- {st['budget']} ({imp['evaluator']}): {ranked}")
        else:
            lines.append(f"- {st['budget']}: **not available**: {imp['reason']}.")
    lines.append("")

    lines += render_consistency(h["consistency"], tag)
    lines += render_scaling(h["scaling"], tag)
    lines += render_calibration(h["calibration"], tag)
    lines += render_baselines(h["baselines"], p)
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def render_consistency(c: dict[str, Any], tag: str) -> list[str]:
    lines = ["### HP consistency across budgets", ""]
    budgets = c["budgets"]
    rows = [["real params", *(f"{c['n_params'][b]:,}" for b in budgets)],
            ["best val AUC", *(fmt(c["best_val_auc"][b]) for b in budgets)],
            ["trial", *(fmt(c["trial_number"][b]) for b in budgets)]]
    rows += [[name + (" *" if name in c["differ_across_budgets"] else ""), *(fmt_param(row[b]) for b in budgets)]
             for name, row in c["params"].items()]
    lines += md_table(["", *budgets], rows)
    lines += ["\\* differs across budgets.", ""]
    cb = c["cross_budget"]
    lines += ["Cross-budget matrix (validation AUC; row = whose best hyperparameters, column = budget trained at):", ""]
    if not cb["available"]:
        return lines + not_available(cb)
    rows = [[r, *(_cell_text(m, s) for m, s in zip(cb["mean"][i], cb["std"][i], strict=True))]
            for i, r in enumerate(cb["budgets"])]
    lines += md_table(["hyperparameters of \\ trained at", *cb["budgets"]], rows)
    if cb["n_seeds"]:
        lines.append(f"Mean ± sd over {cb['n_seeds']} seeds per cell; n/a = infeasible at that budget or failed.")
    lines += [f"- {budget} hyperparameters: {verdict}" for budget, verdict in cb["transfer"].items()]
    if cb.get("noise_rule"):
        lines.append(f"- rule: {cb['noise_rule']}")
    return lines + ["", f"![cross-budget matrix](plots/{tag}_cross_budget.png)", ""]


def _cell_text(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f}"


def render_scaling(sc: dict[str, Any], tag: str) -> list[str]:
    lines = ["### Scaling verdict", ""]
    if not sc["available"]:
        return lines + not_available(sc)
    lines += [f"**Verdict: {sc['verdict']}.** {SCALING_WORDS[sc['verdict']]}", "", f"Why: {sc['explanation']}.", "",
              f"{sc['n_days']} test days shared by every budget ({sc['first_day']} to {sc['last_day']}); "
              f"block length {sc['block_length'] if sc['block_length'] else 'n/a (DeLong)'}.", ""]
    lines += md_table(["budget", "real params", "test AUC [95 % CI]", "SE"],
                      [[b["budget"], f"{b['n_params']:,}", ci_text(b), f"{b['se']:.4f}"] for b in sc["budgets"]])
    rows = [[f"{c['larger']} - {c['smaller']}", f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]",
             f"{c['p_value']:.3g}", f"{c['p_holm']:.3g}", c["direction"]] for c in sc["comparisons"]]
    lines += md_table(["paired difference", "AUC diff [CI]", "p", "p (Holm)", "reading"], rows)
    pl = sc["power_law"]
    if pl["fitted"]:
        excl = "excludes" if pl["exponent_excludes_zero"] else "includes"
        lines += [f"Power law {pl['form']}: b = {pl['b']:.4f} ± {pl['b_se']:.4f} "
                  f"(95 % CI [{pl['b_lo']:.4f}, {pl['b_hi']:.4f}], which {excl} 0; chi2 {pl['chi2']:.2f} on "
                  f"{pl['dof']} dof).", ""]
    else:
        lines += [f"Power law: not fitted ({pl['reason']}).", ""]
    return lines + [f"![scaling](plots/{tag}_scaling.png)", ""]


def render_calibration(cal: dict[str, Any], tag: str) -> list[str]:
    lines = ["### Calibration", ""]
    if not cal["available"]:
        return lines + not_available(cal)
    rows = []
    for budget, r in cal["budgets"].items():
        b, a = r["before"], r["after"]
        rows.append([budget, r["calibrator"], *(f"{fmt(b[k])} -> {fmt(a[k])}" for k in CALIBRATION_METRICS),
                     r["why"] or ""])
    lines += md_table(["budget", "calibrator", "test ECE", "test Brier", "test log loss", "why this calibrator"], rows)
    lines += [f"ECE: {cal['ece']}. Before = raw network probabilities, after = the chosen calibrator "
              "(fitted on validation only).", ""]
    rows = [[budget, r["registered_model"] or "-", fmt(r["version"]), r["alias"] or "-",
             f"degenerate: {r['degenerate']}" if r["degenerate"] else (r["decision"] or "")]
            for budget, r in cal["budgets"].items()]
    lines += md_table(["budget", "registered model", "version", "alias", "decision"], rows)
    lines += [f"![reliability {b}](plots/{tag}_{b}_reliability.png)" for b in cal["budgets"]]
    return lines + [""]


def render_baselines(bl: dict[str, Any], p: dict[str, Any]) -> list[str]:
    lines = ["### Baselines", ""]
    if not bl["available"]:
        return lines + not_available(bl)
    rows = [[BASELINE_NAMES[n], fmt(r["val_auc"]), ci_text(r)] for n, r in bl["baselines"].items()]
    lines += md_table(["baseline", "val AUC", "test AUC [95 % CI]"], rows)
    if not bl["comparisons"]:
        return lines + [f"Paired comparison with the transformer: **not available**: "
                        f"{bl.get('comparisons_reason', 'no transformer predictions')}.", ""]
    rows = [[c["budget"], BASELINE_NAMES[c["baseline"]], f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]",
             f"{c['p_holm']:.3g}",
             ("transformer better" if c["diff"] > 0 else "baseline better") if c["significant"] else "within noise"]
            for c in bl["comparisons"]]
    lines += [f"Transformer minus baseline on the same {bl['n_common_days']} test days (Holm over all rows):", ""]
    lines += md_table(["budget", "baseline", "AUC diff [CI]", "p (Holm)", "reading"], rows)
    return lines


# ============================================================================ plots


def pair_plot_name(tag: str, budget: str, a: str, b: str) -> str:
    return f"{tag}_{budget}_coverage_{a}_x_{b}.png"


def write_plots(h: dict[str, Any], inputs: HorizonInputs, out: Path) -> list[Path]:
    tag = f"h{h['horizon']}"
    written = []
    for s, st in zip(inputs.studies, h["studies"], strict=True):
        if st["hpo"]["history"]:
            written.append(plots.optimization_history(
                st["hpo"]["history"], out / f"{tag}_{s.budget}_history.png", tol=st["hpo"]["efficiency"]["tol"],
                title=f"{inputs.tier} {s.budget} h{inputs.horizon}: validation AUC by trial"))
        cov = st["coverage"]
        if cov["params"]:
            written.append(plots.coverage_heatmap(
                {n: e["counts"] for n, e in cov["params"].items()}, out / f"{tag}_{s.budget}_coverage.png",
                bin_labels={n: e["labels"] for n, e in cov["params"].items()},
                unreachable={n: [b for b in range(e["n_bins"]) if b not in e["reachable"]]
                             for n, e in cov["params"].items()},
                title=f"Coverage, {inputs.tier} {s.budget} h{inputs.horizon} ({cov['n_explored']} explored trials)"))
        for pair in cov["pairs"]:
            a, b = pair["params"]
            counts = np.array(pair["counts"], dtype=np.float64)
            for i, j in pair["unreachable"]:
                counts[i, j] = np.nan  # grey: no feasible architecture there
            written.append(plots.heatmap(
                counts, pair["row_labels"], pair["col_labels"], out / pair_plot_name(tag, s.budget, a, b),
                fmt="{:.0f}", cmap="Blues", vmin=0, xlabel=b, ylabel=a, cbar_label="explored trials",
                title=f"{inputs.tier} {s.budget} h{inputs.horizon}: {a} x {b}\n0 = never explored, n/a = unreachable"))
    sc = h["scaling"]
    if sc["available"]:
        bl = h["baselines"]
        written.append(plots.scaling_plot(
            sc["budgets"], out / f"{tag}_scaling.png",
            baselines={BASELINE_NAMES[n]: r for n, r in bl["baselines"].items()} if bl["available"] else None,
            power_law=sc["power_law"], title=f"{inputs.tier} h{inputs.horizon}: test AUC", verdict=sc["verdict"]))
    cb = h["consistency"]["cross_budget"]
    if cb["available"]:
        target = out / f"{tag}_cross_budget.png"
        made = paths.cross_budget_dir(inputs.tier, inputs.horizon) / "heatmap.png"
        if made.is_file():  # the stage's own figure, with its infeasible / worse marks
            shutil.copyfile(made, target)
        else:
            values = [[np.nan if v is None else v for v in row] for row in cb["mean"]]
            notes = [[_cell_text(m, sd).replace(" ± ", "\n±") for m, sd in zip(mr, sr, strict=True)]
                     for mr, sr in zip(cb["mean"], cb["std"], strict=True)]
            plots.heatmap(values, cb["budgets"], cb["budgets"], target, annotations=notes, xlabel="trained at",
                          ylabel="best hyperparameters of", cbar_label="validation AUC",
                          title=f"{inputs.tier} h{inputs.horizon}: cross-budget validation AUC")
        written.append(target)
    if not isinstance(inputs.promote, Missing):
        for s in inputs.studies:
            target = out / f"{tag}_{s.budget}_reliability.png"
            made = paths.promote_dir(inputs.tier, inputs.horizon) / s.budget / "reliability.png"
            if made.is_file():  # promote drew it with the ECE's own bins
                shutil.copyfile(made, target)
            else:
                preds = inputs.promote[s.budget]["predictions"]
                calibrator = h["calibration"]["budgets"][s.budget]["calibrator"]
                plots.reliability_diagram(preds["y"], {"raw": preds["p_raw"], f"calibrated ({calibrator})": preds["p_cal"]},
                                          target, title=f"{inputs.tier} {s.budget} h{inputs.horizon}: test")
            written.append(target)
    return written


# ============================================================================ orchestration


def build_report(tier: str, cfg: ReportParams, out_dir: Path,
                 loaded: list[HorizonInputs] | None = None) -> dict[str, Any]:
    """Analyse every horizon of ``tier`` and write summary.md, report.json, metrics.json and plots/
    into ``out_dir`` (a fresh directory). Returns the report dict."""
    if loaded is None:
        loaded = [load_inputs(tier, h, cfg.partial) for h in discover_horizons(tier)]
    horizons = []
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True)
    for inputs in loaded:
        h = analyse(inputs, cfg)
        write_plots(h, inputs, plot_dir)
        horizons.append(h)
    report = {"tier": tier, "params": config.to_dict(cfg), "horizons": horizons, **provenance.run_tags()}
    report["headline"] = headline(report)
    (out_dir / "summary.md").write_text(render_markdown(report))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=atomic.json_default) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(report["headline"], indent=2, sort_keys=True,
                                                     default=atomic.json_default) + "\n")
    return report


def _experiment_id(tier: str) -> str | None:
    """The experiment the tier's HPO studies logged to (from any best.json)."""
    for best_path in sorted((paths.results_dir() / "hpo" / tier).glob("*/h*/best.json")):
        exp = _read_json(best_path).get("experiment_id")
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
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri())
    outer = os.environ.get("MLFLOW_RUN_ID")
    if outer:
        try:
            return client.get_run(outer).info.experiment_id, outer
        except MlflowException:
            raise TierHpoError(f"MLFLOW_RUN_ID={outer} is not a run of the tracking store "
                               f"{paths.mlflow_tracking_uri()}; unset it or fix MLFLOW_TRACKING_URI") from None
    experiment_id = _experiment_id(tier)
    if experiment_id is None:
        from training.search.tracking import experiment_name

        found = client.get_experiment_by_name(experiment_name(tier))
        if found is not None and found.lifecycle_stage == "active":
            return found.experiment_id, None
        return client.create_experiment(experiment_name(tier), artifact_location=(
            f"{paths.mlflow_artifact_root()}/{experiment_name(tier)}")), None
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
    """One ``report`` run in the tier's experiment with the report files and headline metrics.

    The run is created with the client (not ``mlflow.start_run``) so that a ``MLFLOW_RUN_ID``
    set by ``mlflow run`` becomes its parent instead of being resumed; it always ends FINISHED,
    FAILED or KILLED.
    """
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri())
    experiment_id, parent = resolve_experiment(report["tier"])
    tags = {"stage": "report", "tier": report["tier"], "git_commit": report["git_commit"],
            "data_version": report["data_version"],
            "horizons": ",".join(str(h["horizon"]) for h in report["horizons"])}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=f"report-{report['tier']}", tags=tags)
    run_id = run.info.run_id
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        from mlflow.entities import Metric, Param

        now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in sorted(mlflow_metrics(report["headline"]).items())]
        params = [Param(k, str(v)) for k, v in sorted(report["params"].items())]
        for start in range(0, max(len(metrics), 1), 500):  # log_batch takes at most 1000 metrics
            client.log_batch(run_id, metrics=metrics[start:start + 500], params=params if start == 0 else [])
        for h in report["horizons"]:
            if h["scaling"]["available"]:
                client.set_tag(run_id, f"scaling_verdict_h{h['horizon']}", h["scaling"]["verdict"])
        client.log_artifacts(run_id, str(report_dir), artifact_path="report")
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        client.set_terminated(run_id, status=status)
    return run_id


def run(tiers: list[str], cfg: ReportParams, log_mlflow: bool = True) -> list[Path]:
    """Write ``reports/<tier>/`` for each tier atomically (all files or none), then log to MLflow."""
    loaded = {}
    for tier in tiers:  # every input checked, and the experiment found, before anything is written
        loaded[tier] = [load_inputs(tier, h, cfg.partial) for h in discover_horizons(tier)]
        if log_mlflow:
            resolve_experiment(tier)
    written = []
    for tier in tiers:
        target = paths.reports_dir() / tier
        report: dict[str, Any] = {}

        def write(tmp: Path, tier: str = tier, report: dict[str, Any] = report) -> None:
            report.update(build_report(tier, cfg, tmp, loaded[tier]))

        atomic.write_with(target, write)
        if log_mlflow:
            report["mlflow_run_id"] = log_to_mlflow(report, target)
        written.append(target)
    return written


@app.command()
def main(
    tier: str | None = typer.Option(None, "--tier", help="Report one tier (default: report.tiers in params.yaml)."),
    all_tiers: bool = typer.Option(False, "--all", help="Report every tier of data.tiers that has HPO results."),
    partial: bool = typer.Option(False, "--partial",
                                 help="Write the report even if promote/cross-budget/baselines outputs are missing; "
                                      "those sections say 'Not available'."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Write reports/ only; do not log a report run."),
) -> None:
    """Write the HPO, coverage, scaling, calibration and baseline reports to reports/<tier>/."""
    if tier and all_tiers:
        raise TierHpoError("pass either --tier or --all, not both")
    cfg = config.load(ReportParams, "report", partial=partial or None)
    data = config.section("data")
    known = list(data.get("tiers") or [])
    if all_tiers:
        tiers = discover_tiers(known)
    else:
        tiers = [tier] if tier else list(cfg.tiers)
        unknown = [t for t in tiers if known and t not in known]
        if unknown:
            raise TierHpoError(f"unknown tier(s) {', '.join(map(shorten, unknown))}; choose one of "
                               f"{', '.join(known)} (data.tiers in params.yaml)")
    for path in run(tiers, cfg, log_mlflow=not no_mlflow):
        typer.echo(f"report: wrote {path / 'summary.md'}")
