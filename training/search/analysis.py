"""What one finished Optuna study learned: results, wasted compute, efficiency, coverage, importance.

Pure functions of an ``optuna.Study`` (read from the RDB storage by the report stage), in the HPO
engine's own terms (``training.search``): trial user attrs ``phase`` (``forced``, ``tpe``,
``coverage``, ``random``) and ``info`` (``epochs``, ``timing.total_s``); wasted reasons, "void" trials (claimed and given back
unrun, not counted) and the finished-trial denominator come from ``training.search.waste``; the
best trial is chosen as ``training.search.results.select_best`` does (complete, useful, not void),
so the report's best is the one in ``best.json``.

Coverage uses the engine's binning (``training.search.space.Param.n_bins`` / ``bin_of``: one bin
per value for small discrete axes, otherwise equal-width bins of the unit coordinate, log scale
where the parameter is), rebuilt from the distributions the trials recorded. Occupancy is
recounted from the trials; the study's last coverage snapshot (study user attr ``coverage``,
``CoverageTracker.to_json``) supplies what cannot be recounted without the HPO params: the bin
count, the configured pairs and which bins are reachable at the budget (feasible architectures).
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

from training.search import waste
from training.search.space import Param

PHASE_ATTR = "phase"
EPOCHS_ATTR = "epochs"
COVERAGE_ATTR = "coverage"
TPE_PHASE = "tpe"
EXPLORED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


# ---------------------------------------------------------------------------- results and compute


def trial_seconds(trial: FrozenTrial) -> float | None:
    """Wall time of a trial: the engine's own timing when recorded, else start-to-complete."""
    timing = (trial.user_attrs.get("info") or {}).get("timing") or {}
    if isinstance(timing.get("total_s"), (int, float)):
        return float(timing["total_s"])
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trial_epochs(trial: FrozenTrial) -> int:
    """Epochs the trial trained: the engine's record (``info.epochs``, or an ``epochs`` attr), else
    the number of intermediate values it reported."""
    for epochs in ((trial.user_attrs.get("info") or {}).get(EPOCHS_ATTR), trial.user_attrs.get(EPOCHS_ATTR)):
        if isinstance(epochs, (int, float)):
            return int(epochs)
    return len(trial.intermediate_values)


def useful(trial: FrozenTrial) -> bool:
    """Complete, with a finite value, not wasted and not void: eligible to be the best trial."""
    return (trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value)
            and waste.reason(trial) is None and not waste.is_void(trial))


def _describe(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "total": 0.0}
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "total": float(np.sum(values))}


def hpo_summary(study: optuna.Study, *, top_k: int = 5, tol: float = 0.005) -> dict[str, Any]:
    """Best / median / top-k objective over useful trials, trials by state and phase, wasted
    fraction by reason, compute per trial and in total, and trial efficiency (trials until the
    running best was within ``tol`` of the final best)."""
    all_trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    trials = [t for t in all_trials if not waste.is_void(t)]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted((t for t in trials if useful(t)), key=lambda t: (t.value, -t.number) if maximize
                    else (-t.value, -t.number), reverse=True)
    finished = waste.counted(trials)
    summary = waste.summarize(trials)
    reasons = {t.number: waste.reason(t) for t in finished}
    fail_reasons = Counter(str(waste.fail_reason(t)).split(":")[0] for t in finished if t.state == TrialState.FAIL)

    seconds = {t.number: trial_seconds(t) for t in finished}
    timed = [s for s in seconds.values() if s is not None]
    wasted_seconds = sum(s for n, s in seconds.items() if s is not None and reasons[n])
    epochs = [float(trial_epochs(t)) for t in finished]
    return {
        "study_name": study.study_name,
        "direction": "maximize" if maximize else "minimize",
        "n_trials": len(trials),
        "n_void": len(all_trials) - len(trials),
        "by_state": dict(sorted(Counter(t.state.name for t in trials).items())),
        "by_phase": dict(sorted(Counter(str(t.user_attrs.get(PHASE_ATTR, "unknown")) for t in trials).items())),
        "best": _trial_row(ranked[0]) if ranked else None,
        "median": float(np.median([t.value for t in ranked])) if ranked else None,
        "top": [_trial_row(t) for t in ranked[:top_k]],
        "best_by_phase": _best_by_phase(ranked, maximize),
        "wasted": {
            "n_finished": summary["n_finished"],
            "n_wasted": summary["n_wasted"],
            "fraction": summary["wasted_fraction"] if finished else None,
            "by_reason": {r: {"count": summary["count"][r], "fraction": summary["fraction"][r]}
                          for r in waste.REASONS if summary["count"][r]},
            "fail_reasons": dict(fail_reasons.most_common()),
            "seconds": wasted_seconds,
            "seconds_fraction": wasted_seconds / sum(timed) if timed and sum(timed) > 0 else None,
        },
        "compute": {"seconds": _describe(timed), "epochs": _describe(epochs)},
        "efficiency": trial_efficiency(trials, tol=tol, maximize=maximize),
        "history": [{"number": t.number, "state": t.state.name, "phase": t.user_attrs.get(PHASE_ATTR),
                     "value": t.value if t.state == TrialState.COMPLETE else None, "wasted": reasons[t.number]}
                    for t in finished],
    }


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "value": float(t.value), "phase": t.user_attrs.get(PHASE_ATTR), "params": dict(t.params)}


def _best_by_phase(trials: Iterable[FrozenTrial], maximize: bool) -> dict[str, float]:
    best: dict[str, float] = {}
    for t in trials:
        phase = str(t.user_attrs.get(PHASE_ATTR, "unknown"))
        if phase not in best or (t.value > best[phase] if maximize else t.value < best[phase]):
            best[phase] = float(t.value)
    return dict(sorted(best.items()))


def trial_efficiency(trials: Sequence[FrozenTrial], *, tol: float = 0.005, maximize: bool = True) -> dict[str, Any]:
    """How many trials (in trial-number order, every non-void trial counted) until the running best
    useful trial came within ``tol`` of the final best."""
    ordered = sorted((t for t in trials if not waste.is_void(t)), key=lambda t: t.number)
    done = [t.value for t in ordered if useful(t)]
    if not done:
        return {"tol": tol, "final_best": None, "trials_to_within_tol": None, "trial_number": None,
                "n_trials": len(ordered)}
    final = max(done) if maximize else min(done)
    for count, t in enumerate(ordered, start=1):
        if useful(t) and (t.value >= final - tol if maximize else t.value <= final + tol):
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


def infer_bins(params: dict[str, Param], snapshot: dict[str, Any] | None, default: int) -> int:
    """The engine's ``hpo.coverage.bins``: the bin count of a binned (not per-value) axis in the snapshot."""
    axes = (snapshot or {}).get("axes") or {}
    for name, p in params.items():
        shape = (axes.get(name) or {}).get("shape")
        if shape and (not p.discrete or len(p.values()) > shape[0]):
            return int(shape[0])
    return default


def _reachable(snapshot: dict[str, Any] | None, axis: str, shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Bins of ``axis`` a feasible architecture can reach (all of them when the snapshot says nothing)."""
    entry = ((snapshot or {}).get("axes") or {}).get(axis)
    if entry and tuple(entry.get("shape") or ()) == shape:
        return {tuple(b) for b in (entry.get("occupied") or []) + (entry.get("empty") or [])}
    return set(np.ndindex(*shape))


def coverage_analysis(
    study: optuna.Study, *, bins: int = 5, pairs: Sequence[Sequence[str]] = (), concentration_share: float = 0.5
) -> dict[str, Any]:
    """Per-parameter and pair bin occupancy of the explored trials (complete and pruned), the
    reachable bins never explored, the bins no feasible architecture reaches, and where the
    TPE-phase trials concentrated.

    ``bins`` and ``pairs`` are fallbacks: the study's coverage snapshot, when present, gives the
    engine's bin count and configured pairs. A parameter's TPE concentration is the share of TPE
    trials in its densest bin, also relative to the uniform share ``1 / n_bins``; parameters
    where it reaches ``concentration_share`` (with at least 4 TPE trials) are listed.
    """
    explored = [t for t in study.get_trials(deepcopy=False) if t.state in EXPLORED_STATES and not waste.is_void(t)]
    params = study_params(explored)
    snapshot = study.user_attrs.get(COVERAGE_ATTR)
    snapshot = snapshot if isinstance(snapshot, dict) else None
    bins = infer_bins(params, snapshot, bins)
    configured = [list(a["params"]) for a in ((snapshot or {}).get("axes") or {}).values()
                  if len(a.get("params") or []) == 2]
    pairs = configured or [list(p) for p in pairs]
    tpe = [t for t in explored if t.user_attrs.get(PHASE_ATTR) == TPE_PHASE]

    per_param: dict[str, Any] = {}
    for name, p in params.items():
        n = p.n_bins(bins)
        labels = bin_labels(p, bins)
        counts = np.bincount([p.bin_of(t.params[name], bins) for t in explored if name in t.params], minlength=n)
        tpe_counts = np.bincount([p.bin_of(t.params[name], bins) for t in tpe if name in t.params], minlength=n)
        reach = sorted(b for (b,) in _reachable(snapshot, name, (n,)))
        entry = {
            "n_bins": n,
            "labels": labels,
            "counts": counts.tolist(),
            "reachable": reach,
            "fraction": float(np.mean([counts[b] > 0 for b in reach])) if reach else None,
            "empty": [labels[b] for b in reach if counts[b] == 0],
            "unreachable": [labels[b] for b in range(n) if b not in reach],
            "tpe_counts": tpe_counts.tolist(),
        }
        if tpe_counts.sum():
            top = int(tpe_counts.argmax())
            share = float(tpe_counts[top] / tpe_counts.sum())
            entry["tpe_focus"] = {"bin": labels[top], "share": share, "vs_uniform": share * len(reach or labels),
                                  "n_tpe": int(tpe_counts.sum())}
        per_param[name] = entry

    pair_rows = []
    for a, b in pairs:
        if a not in params or b not in params:
            continue
        pa, pb = params[a], params[b]
        shape = (pa.n_bins(bins), pb.n_bins(bins))
        grid = np.zeros(shape, dtype=int)
        for t in explored:
            if a in t.params and b in t.params:
                grid[pa.bin_of(t.params[a], bins), pb.bin_of(t.params[b], bins)] += 1
        reach = _reachable(snapshot, f"{a}.{b}", shape)
        la, lb = bin_labels(pa, bins), bin_labels(pb, bins)
        pair_rows.append({
            "params": [a, b], "counts": grid.tolist(), "row_labels": la, "col_labels": lb,
            "fraction": float(np.mean([grid[c] > 0 for c in reach])) if reach else None,
            "n_reachable": len(reach),
            "empty": [f"{a}={la[i]}, {b}={lb[j]}" for i, j in sorted(reach) if grid[i, j] == 0],
            "unreachable": [[int(i), int(j)] for i, j in np.ndindex(*shape) if (i, j) not in reach],
        })
    fractions = [e["fraction"] for e in per_param.values() if e["fraction"] is not None]
    fractions += [r["fraction"] for r in pair_rows if r["fraction"] is not None]
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
        "engine_overall": (snapshot or {}).get("overall"),
        "pairs_from": "hpo.coverage.pairs" if configured else "most important parameters",
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
