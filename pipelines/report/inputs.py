"""The report's inputs: only files its DVC stage declares as dependencies (``results/**``).

Per (tier, horizon): each study's ``best.json`` and ``study.json`` (else ``trials.csv``), read by
``training.search.study_outputs`` into an in-memory study; ``promote`` (``<budget>/summary.json``,
``predictions.parquet``), ``cross-budget`` (``matrix.json``) and ``baselines`` (``metrics.json``,
``predictions.parquet``). Per horizon: the select stage's ``verdicts.json``; per (budget, horizon)
with at least two tiers: the cross-tier stage's ``matrix.json``.

Missing inputs: HPO results are required (no study, no report). The downstream stages are
required too by default, because a report silently missing its verdicts is worse than no
report: a missing one stops with a one-line error naming the command that makes it. With
``--partial`` the report is written anyway and each section whose input is missing says
"Not available" and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common import paths
from common.errors import TierHpoError
from pipelines.report.params import BASELINES, REQUIRED_BASELINES
from training import selection_record
from training.budget import parse_budget
from training.search import study_outputs
from training.selection_record import SelectionRecord


@dataclass
class Study:
    budget: str
    best: dict[str, Any]
    study: Any  # optuna.Study, rebuilt in memory from study.json / trials.csv

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


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TierHpoError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); rerun the stage that wrote it") from None
    if not isinstance(data, dict):
        raise TierHpoError(f"{path} must hold a JSON object")
    return data


def read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
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


def budget_order(budget: str) -> tuple[int, str]:
    """Budgets sort by their parameter count ("20K" < "60K" < "200K"), never alphabetically."""
    try:
        return parse_budget(budget), budget
    except (TierHpoError, ValueError):
        return 1 << 62, budget


def load_studies(tier: str, horizon: int) -> list[Study]:
    """Each study of (tier, horizon) from its HPO stage's outputs (never from the Optuna store)."""
    root = paths.results_dir() / "hpo" / tier
    studies = []
    for best_path in sorted(root.glob(f"*/h{horizon}/best.json")):
        budget = best_path.parent.parent.name
        command = f"tierhpo hpo --tier {tier} --budget {budget} --horizon {horizon}"
        best = read_json(best_path)
        for key in ("study_name", "n_params", "params", "metrics"):
            if key not in best:
                raise TierHpoError(f"{best_path} lacks '{key}'; rerun `{command}`")
        studies.append(Study(budget, best, study_outputs.load(best_path.parent, command)))
    studies.sort(key=lambda s: (s.n_params, budget_order(s.budget)))
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
        summary = read_json(root / s.budget / "summary.json")
        recorded = summary.get("study_name")
        if recorded is not None and recorded != s.best["study_name"]:
            raise TierHpoError(
                f"{root / s.budget / 'summary.json'} promoted study '{recorded}' but the current study is "
                f"'{s.best['study_name']}'; rerun `{command}`"
            )
        preds = read_parquet(root / s.budget / "predictions.parquet", ("date", "y", "p_raw", "p_cal"))
        out[s.budget] = {"summary": summary, "predictions": preds}
    return out


def load_cross_budget(tier: str, horizon: int) -> dict[str, Any] | Missing:
    path = paths.cross_budget_dir(tier, horizon) / "matrix.json"
    if not path.is_file():
        return Missing(f"no cross-budget matrix for {tier} h{horizon} at {path}",
                       f"tierhpo cross-budget --tier {tier} --horizon {horizon}")
    return read_json(path)


def load_baselines(tier: str, horizon: int) -> dict[str, Any] | Missing:
    root = paths.baselines_dir(tier, horizon)
    if not (root / "metrics.json").is_file() or not (root / "predictions.parquet").is_file():
        return Missing(f"no baseline results for {tier} h{horizon} under {root}",
                       f"tierhpo baselines --tier {tier} --horizon {horizon}")
    preds = read_parquet(root / "predictions.parquet", ("date", "split", "y", *REQUIRED_BASELINES))
    names = [n for n in BASELINES if n in preds.columns]
    return {"metrics": read_json(root / "metrics.json"), "predictions": preds, "names": names}


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


def check_cross_budget_fresh(raw: dict[str, Any], studies: list[Study], tier: str, horizon: int) -> None:
    """The matrix must come from the current studies (``studies[budget].study_name`` in matrix.json)."""
    recorded = raw.get("studies") or {}
    for s in studies:
        name = (recorded.get(s.budget) or {}).get("study_name")
        if name is not None and name != s.best["study_name"]:
            raise TierHpoError(f"the cross-budget matrix of {tier} h{horizon} was computed from study '{name}', "
                               f"not the current '{s.best['study_name']}'; rerun `tierhpo cross-budget --tier {tier} "
                               f"--horizon {horizon}`")


def load_cross_tier(budget: str, horizon: int, studies: dict[str, Study], partial: bool) -> dict[str, Any] | Missing:
    """``results/cross_tier/<budget>/h<h>/matrix.json`` (``studies``: tier -> its current study at
    ``budget``), refused when computed from other studies; Missing under --partial, else an error."""
    path = paths.cross_tier_dir(budget, horizon) / "matrix.json"
    command = f"tierhpo cross-tier --budget {budget} --horizon {horizon}"
    if not path.is_file():
        missing = Missing(f"no cross-tier matrix for {budget} h{horizon} at {path}", command)
        if not partial:
            raise TierHpoError(missing.line() + " (or pass --partial to report what exists)")
        return missing
    raw = read_json(path)
    for key in ("tiers", "cells", "transfer"):
        if key not in raw:
            raise TierHpoError(f"{path} lacks '{key}'; rerun `{command}`")
    recorded = raw.get("studies") or {}
    for tier, s in studies.items():
        name = (recorded.get(tier) or {}).get("study_name")
        if name is not None and name != s.best["study_name"]:
            raise TierHpoError(f"the cross-tier matrix of {budget} h{horizon} was computed from study '{name}', "
                               f"not the current '{s.best['study_name']}' of {tier}; rerun `{command}`")
    return raw


def load_selection(horizon: int, partial: bool) -> SelectionRecord | Missing:
    """``results/select/h<h>/verdicts.json`` (the grid's verdicts), or Missing under --partial."""
    directory = paths.results_dir() / "select" / f"h{horizon}"
    if not (directory / selection_record.FILE).is_file():
        missing = Missing(f"no selection record for h{horizon} at {directory / selection_record.FILE}",
                          f"tierhpo select --horizon {horizon}")
        if not partial:
            raise TierHpoError(missing.line() + " (or pass --partial to report what exists)")
        return missing
    return SelectionRecord.read(directory)

