"""What one finished Optuna study learned: results, wasted compute, efficiency, coverage, importance.

Pure functions of an ``optuna.Study`` (read from the RDB storage by the report stage). Trial
attributes follow the HPO engine (``training.search``): user attr ``phase`` (``forced``,
``tpe``, ``coverage``, ``random``), ``wasted_reason`` (empty or absent = useful) and ``epochs``
(epochs actually trained; the count of reported intermediate values is the fallback).

Coverage uses the engine's own binning (``training.search.space.Param.n_bins`` / ``bin_of``:
one bin per value for small discrete axes, otherwise equal-width bins of the unit coordinate,
log scale where the parameter is), rebuilt from the distributions the study's trials recorded,
so the report bins exactly as the sampler did without reading the HPO params.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import optuna
import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState

from training.search.space import Param

PHASE_ATTR = "phase"
WASTED_ATTR = "wasted_reason"
EPOCHS_ATTR = "epochs"
TPE_PHASE = "tpe"
EXPLORED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ---------------------------------------------------------------------------- results and compute


def trial_seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trial_epochs(trial: FrozenTrial) -> int:
    epochs = trial.user_attrs.get(EPOCHS_ATTR)
    return int(epochs) if isinstance(epochs, (int, float)) else len(trial.intermediate_values)


def _describe(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "total": 0.0}
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "total": float(np.sum(values))}


def hpo_summary(study: optuna.Study, *, top_k: int = 5, tol: float = 0.005) -> dict[str, Any]:
    """Best / median / top-k objective, trials by state and phase, wasted fraction by reason,
    compute per trial and in total, and trial efficiency (trials until within ``tol`` of the
    final best)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    ranked = sorted(complete, key=lambda t: t.value, reverse=maximize)
    finished = [t for t in trials if t.state in FINISHED_STATES]

    wasted = {t.number: str(t.user_attrs.get(WASTED_ATTR) or "") for t in finished}
    recorded = any(WASTED_ATTR in t.user_attrs for t in finished)
    by_reason = Counter(r for r in wasted.values() if r)
    n_wasted = sum(by_reason.values())

    seconds = {t.number: trial_seconds(t) for t in finished}
    epochs = {t.number: trial_epochs(t) for t in finished}
    timed = [s for s in seconds.values() if s is not None]
    wasted_seconds = sum(s for n, s in seconds.items() if s is not None and wasted[n])

    return {
        "study_name": study.study_name,
        "direction": "maximize" if maximize else "minimize",
        "n_trials": len(trials),
        "by_state": dict(sorted(Counter(t.state.name for t in trials).items())),
        "by_phase": dict(sorted(Counter(str(t.user_attrs.get(PHASE_ATTR, "unknown")) for t in trials).items())),
        "best": _trial_row(ranked[0]) if ranked else None,
        "median": float(np.median([t.value for t in complete])) if complete else None,
        "top": [_trial_row(t) for t in ranked[:top_k]],
        "best_by_phase": _best_by_phase(complete, maximize),
        "wasted": {
            "recorded": recorded,
            "n_finished": len(finished),
            "n_wasted": n_wasted,
            "fraction": n_wasted / len(finished) if finished else None,
            "by_reason": {r: {"count": c, "fraction": c / len(finished)} for r, c in sorted(by_reason.items())},
            "seconds": wasted_seconds,
            "seconds_fraction": wasted_seconds / sum(timed) if timed and sum(timed) > 0 else None,
        },
        "compute": {
            "seconds": _describe(timed),
            "epochs": _describe([float(e) for e in epochs.values()]),
        },
        "efficiency": trial_efficiency(trials, tol=tol, maximize=maximize),
    }


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "value": float(t.value), "phase": t.user_attrs.get(PHASE_ATTR), "params": dict(t.params)}


def _best_by_phase(complete: Iterable[FrozenTrial], maximize: bool) -> dict[str, float]:
    best: dict[str, float] = {}
    for t in complete:
        phase = str(t.user_attrs.get(PHASE_ATTR, "unknown"))
        if phase not in best or (t.value > best[phase] if maximize else t.value < best[phase]):
            best[phase] = float(t.value)
    return dict(sorted(best.items()))


def trial_efficiency(trials: Sequence[FrozenTrial], *, tol: float = 0.005, maximize: bool = True) -> dict[str, Any]:
    """How many trials (in trial-number order, every state counted) until the running best came
    within ``tol`` of the final best."""
    ordered = sorted(trials, key=lambda t: t.number)
    values = [t.value if t.state == TrialState.COMPLETE and t.value is not None else None for t in ordered]
    done = [v for v in values if v is not None and math.isfinite(v)]
    if not done:
        return {"tol": tol, "final_best": None, "trials_to_within_tol": None, "trial_number": None,
                "n_trials": len(ordered)}
    final = max(done) if maximize else min(done)
    for count, (t, v) in enumerate(zip(ordered, values, strict=True), start=1):
        if v is not None and math.isfinite(v) and (v >= final - tol if maximize else v <= final + tol):
            return {"tol": tol, "final_best": final, "trials_to_within_tol": count, "trial_number": t.number,
                    "n_trials": len(ordered), "fraction_of_trials": count / len(ordered)}
    raise AssertionError("unreachable: the final best is within tol of itself")


# ---------------------------------------------------------------------------- coverage


def param_of(name: str, dist: od.BaseDistribution) -> Param:
    """The engine's ``Param`` for a recorded Optuna distribution (same bins as the sampler)."""
    if isinstance(dist, od.CategoricalDistribution):
        return Param(name, "categorical", choices=tuple(dist.choices))
    if isinstance(dist, od.IntDistribution):
        return Param(name, "int", low=int(dist.low), high=int(dist.high), log=dist.log, step=int(dist.step))
    if isinstance(dist, od.FloatDistribution):
        return Param(name, "float", low=float(dist.low), high=float(dist.high), log=dist.log)
    raise TypeError(f"unsupported distribution for {name}: {type(dist).__name__}")


def study_params(trials: Iterable[FrozenTrial]) -> dict[str, Param]:
    """Each varying parameter's ``Param``, from the first distribution a trial recorded."""
    dists: dict[str, od.BaseDistribution] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            dists.setdefault(name, dist)
    return {n: param_of(n, d) for n, d in dists.items() if not d.single()}


def bin_labels(param: Param, bins: int) -> list[str]:
    """Human-readable range (or value) of each bin of ``param``."""
    n = param.n_bins(bins)
    if param.discrete and len(param.values()) <= bins:
        return [str(v) for v in param.values()]

    def fmt(v: float) -> str:
        return f"{v:.3g}" if param.kind == "float" else str(int(round(v)))

    return [f"{fmt(param.from_unit(b / n))}..{fmt(param.from_unit((b + 1) / n))}" for b in range(n)]


def coverage_analysis(
    study: optuna.Study, *, bins: int = 5, pairs: Sequence[Sequence[str]] = (), concentration_share: float = 0.5
) -> dict[str, Any]:
    """Per-parameter and pair bin occupancy of the explored trials (complete and pruned), the
    bins never explored, and where the TPE-phase trials concentrated.

    A parameter's TPE concentration is the share of TPE trials in its densest bin, also given
    relative to the uniform share ``1 / n_bins``; parameters where that share reaches
    ``concentration_share`` (with at least 4 TPE trials) are listed as concentrated.
    """
    explored = [t for t in study.get_trials(deepcopy=False) if t.state in EXPLORED_STATES]
    params = study_params(explored)
    tpe = [t for t in explored if t.user_attrs.get(PHASE_ATTR) == TPE_PHASE]
    per_param: dict[str, Any] = {}
    for name, p in params.items():
        n = p.n_bins(bins)
        labels = bin_labels(p, bins)
        counts = np.bincount([p.bin_of(t.params[name], bins) for t in explored if name in t.params], minlength=n)
        tpe_counts = np.bincount([p.bin_of(t.params[name], bins) for t in tpe if name in t.params], minlength=n)
        entry = {
            "n_bins": n,
            "labels": labels,
            "counts": counts.tolist(),
            "fraction": float((counts > 0).mean()),
            "empty": [labels[b] for b in np.flatnonzero(counts == 0)],
            "tpe_counts": tpe_counts.tolist(),
        }
        if tpe_counts.sum():
            top = int(tpe_counts.argmax())
            share = float(tpe_counts[top] / tpe_counts.sum())
            entry["tpe_focus"] = {"bin": labels[top], "share": share, "vs_uniform": share * n,
                                  "n_tpe": int(tpe_counts.sum())}
        per_param[name] = entry

    pair_rows = []
    for a, b in pairs:
        if a not in params or b not in params:
            continue
        pa, pb = params[a], params[b]
        grid = np.zeros((pa.n_bins(bins), pb.n_bins(bins)), dtype=int)
        for t in explored:
            if a in t.params and b in t.params:
                grid[pa.bin_of(t.params[a], bins), pb.bin_of(t.params[b], bins)] += 1
        la, lb = bin_labels(pa, bins), bin_labels(pb, bins)
        pair_rows.append({
            "params": [a, b], "counts": grid.tolist(), "row_labels": la, "col_labels": lb,
            "fraction": float((grid > 0).mean()),
            "empty": [f"{a}={la[i]}, {b}={lb[j]}" for i, j in zip(*np.nonzero(grid == 0), strict=True)],
        })
    fractions = [e["fraction"] for e in per_param.values()] + [r["fraction"] for r in pair_rows]
    concentrated = sorted(
        (name for name, e in per_param.items()
         if "tpe_focus" in e and e["tpe_focus"]["n_tpe"] >= 4 and e["tpe_focus"]["share"] >= concentration_share),
        key=lambda name: -per_param[name]["tpe_focus"]["share"],
    )
    return {
        "bins": bins,
        "n_explored": len(explored),
        "n_tpe": len(tpe),
        "overall": float(np.mean(fractions)) if fractions else None,
        "params": per_param,
        "pairs": pair_rows,
        "tpe_concentrated": concentrated,
    }


# ---------------------------------------------------------------------------- importance


def param_importance(study: optuna.Study) -> dict[str, Any]:
    """``optuna.importance.get_param_importances`` with Optuna's default evaluator (PED-ANOVA in
    Optuna 5); ``{"available": False, "reason": ...}`` when the study cannot support it."""
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {"available": False, "reason": f"needs at least 2 complete trials, have {len(complete)}",
                "evaluator": type(evaluator).__name__}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return {"available": False, "reason": str(exc).splitlines()[0], "evaluator": type(evaluator).__name__}
    return {"available": True, "evaluator": type(evaluator).__name__,
            "importances": {k: float(v) for k, v in values.items()}}


def important_pairs(importances: dict[str, float], k: int = 3) -> list[list[str]]:
    """Pairs among the ``k`` most important parameters (the pairs worth a joint coverage map)."""
    top = [name for name, _ in sorted(importances.items(), key=lambda kv: -kv[1])[:k]]
    return [[top[i], top[j]] for i in range(len(top)) for j in range(i + 1, len(top))]
