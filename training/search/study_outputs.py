"""A study's HPO-stage outputs as a contract: ``study.json`` is written here and read here.

The HPO stage writes ``study.json`` beside ``best.json`` (``study_document``): ``study_name``,
``direction``, ``metric_names``, ``distributions`` (each parameter's
``optuna.distributions.distribution_to_json``), ``user_attrs`` (the coverage snapshot), and
``trials`` with ``number, state, value, params, user_attrs, intermediate_values``. Readers (the
report) replay it into an in-memory ``optuna.create_study()`` with
``optuna.trial.create_trial`` (``load``), so ``training.search.analysis`` works on it unchanged
and nobody but the HPO stage opens the Optuna store.

``trials.csv`` (``number, state, value, phase, wasted, fail_reason, epochs, seconds, param_*``)
is the fallback for outputs written before ``study.json`` existed: distributions are the
narrowest that hold the recorded values (floats: a float range, log when it spans more than a
decade of positives; integers: an int range; anything else: categorical). That is enough for
history, waste, best and importance, but a categorical of numbers reads as an int range and
coverage has no reachability snapshot, which is why ``study.json`` exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import optuna.distributions as od
import pandas as pd
from optuna.trial import FrozenTrial, TrialState, create_trial

from common.errors import TierHpoError

STUDY_JSON, TRIALS_CSV = "study.json", "trials.csv"
# states a replayed trial may have: create_trial refuses RUNNING/WAITING (they carry no result yet)
_FINISHED = {s.name: s for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_document(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, Any]:
    """The ``study.json`` document of ``study``'s ``trials`` (the ones the outputs count)."""
    distributions: dict[str, str] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            distributions.setdefault(name, od.distribution_to_json(dist))
    return {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric_names": study.metric_names,
        "distributions": distributions,
        "user_attrs": dict(study.user_attrs),
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                    "user_attrs": dict(t.user_attrs),
                    "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()}}
                   for t in sorted(trials, key=lambda t: t.number)],
    }


def load(directory: Path, command: str) -> optuna.Study:
    """The study recorded in ``directory`` (``study.json``, else ``trials.csv``)."""
    if (directory / STUDY_JSON).is_file():
        return from_study_json(directory / STUDY_JSON, command)
    if (directory / TRIALS_CSV).is_file():
        return from_trials_csv(directory / TRIALS_CSV, command)
    raise TierHpoError(f"{directory} has neither {STUDY_JSON} nor {TRIALS_CSV}; rerun `{command}`")


def _new_study(direction: str, metric_names: list[str] | None) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    if metric_names:
        study.set_metric_names(list(metric_names))
    return study


def from_study_json(path: Path, command: str) -> optuna.Study:
    try:
        raw = json.loads(path.read_text())
        dists = {k: od.json_to_distribution(v if isinstance(v, str) else json.dumps(v))
                 for k, v in raw["distributions"].items()}
        study = _new_study(raw.get("direction", "maximize"), raw.get("metric_names"))
        for key, value in (raw.get("user_attrs") or {}).items():
            study.set_user_attr(key, value)
        trials = []
        for t in raw["trials"]:
            state = _FINISHED.get(str(t["state"]))
            if state is None:
                continue  # a trial still running when the stage ended: nothing to analyse yet
            params = t.get("params") or {}
            if state == TrialState.COMPLETE and t.get("value") is None:
                state = TrialState.FAIL  # a COMPLETE trial without a value cannot be replayed as complete
            trials.append(create_trial(
                state=state, value=t.get("value") if state == TrialState.COMPLETE else None,
                params=params, distributions={k: dists[k] for k in params},
                user_attrs=t.get("user_attrs") or {},
                intermediate_values={int(k): float(v) for k, v in (t.get("intermediate_values") or {}).items()}))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise TierHpoError(f"{path} does not follow the study-outputs contract ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); rerun `{command}`") from None
    study.add_trials(trials)
    return study


def infer_distribution(values: pd.Series) -> od.BaseDistribution:
    """The narrowest distribution holding the recorded values (trials.csv keeps no distributions)."""
    present = values.dropna()
    if present.empty:
        return od.CategoricalDistribution([None])
    if pd.api.types.is_bool_dtype(present) or not pd.api.types.is_numeric_dtype(present):
        return od.CategoricalDistribution(sorted({_plain(v) for v in present}, key=str))
    lo, hi = float(present.min()), float(present.max())
    if pd.api.types.is_integer_dtype(present):
        return od.IntDistribution(int(lo), max(int(hi), int(lo) + 1))
    hi = hi if hi > lo else lo + abs(lo) * 1e-6 + 1e-12
    return od.FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 10)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def from_trials_csv(path: Path, command: str) -> optuna.Study:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise TierHpoError(f"{path} cannot be read ({str(exc).splitlines()[0]}); rerun `{command}`") from None
    for col in ("number", "state"):
        if col not in frame.columns:
            raise TierHpoError(f"{path} lacks column '{col}'; rerun `{command}`")
    param_cols = [c for c in frame.columns if c.startswith("param_")]
    dists = {c[len("param_"):]: infer_distribution(frame[c]) for c in param_cols}
    study = _new_study("maximize", ["val/auc"])
    trials = []
    for row in frame.sort_values("number").to_dict("records"):
        state = _FINISHED.get(str(row["state"]))
        if state is None:
            continue
        params = {n: _plain(row[f"param_{n}"]) for n in dists if not _missing(row[f"param_{n}"])}
        attrs: dict[str, Any] = {}
        for key in ("phase", "wasted", "fail_reason"):
            if key in row and not _missing(row[key]):
                attrs[key] = row[key]
        info = {k: _plain(row[k]) for k in ("epochs", "best_epoch", "n_params") if k in row and not _missing(row[k])}
        if "seconds" in row and not _missing(row["seconds"]):
            info["timing"] = {"total_s": float(row["seconds"])}
        attrs["info"] = info
        value = row.get("value")
        if state == TrialState.COMPLETE and _missing(value):
            state = TrialState.FAIL
        trials.append(create_trial(
            state=state, value=float(value) if state == TrialState.COMPLETE and not _missing(value) else None,
            params=params, distributions={k: dists[k] for k in params}, user_attrs=attrs))
    try:
        study.add_trials(trials)
    except ValueError as exc:
        raise TierHpoError(f"{path}: {exc}; rerun `{command}`") from None
    return study


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
