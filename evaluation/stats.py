"""Confidence intervals and paired tests for ROC AUC on daily test sets, and the scaling verdict.

Why a block bootstrap is the default
    A test day's label at horizon ``h`` looks ``h`` days ahead, so neighbouring labels overlap, and
    scores from overlapping input windows are autocorrelated too. An iid method (DeLong,
    Hanley-McNeil, the plain bootstrap) then understates the variance. The default is the
    Politis-Romano *stationary* bootstrap of ``arch.bootstrap`` over the days, in time order.

Block length (``choose_block_length``)
    ``max(horizon, ceil(L))`` where ``L`` is ``arch.bootstrap.optimal_block_length`` (Politis-White
    2004, with the Patton-Politis-White 2009 correction) of the AUC's per-day *weighted*
    contributions (``evaluation.auc.auc_contributions``: a positive day's placement weighted by
    1/(2 pi), a negative day's by 1/(2 (1 - pi))), whose mean is the AUC. The unweighted placement
    series over-weights the rare class's neighbours and estimated 40 days where the weighted one
    gives 1.6 (issue 12), widening every interval. One function for promote, select and the report,
    so the same AUC always gets the same interval. ``horizon`` is a floor: labels overlap for ``h`` days
    by construction, whatever the estimate says. With several score columns the largest
    estimate wins.

AUC per resample
    Each resample's AUC is the Mann-Whitney statistic ``U / (n_pos * n_neg)`` computed from
    ``scipy.stats.rankdata`` with averaged ties along the resample axis. It equals
    ``sklearn.metrics.roc_auc_score`` exactly (ties included) and runs thousands of resamples
    in one vectorised call, where ``roc_auc_score`` per resample would be ~100x slower.
    Resamples that contain a single class have no AUC and are dropped (their count is reported).

Intervals and p-values
    Percentile intervals of the bootstrap distribution. The paired p-value is the percentile
    test that matches them: twice the smaller share of bootstrap differences on either side of
    zero, with the ``(1 + count) / (1 + reps)`` correction, so "the CI excludes 0" and
    "p < alpha" always agree.

DeLong (``method="delong"``)
    Offered as the iid reference. Written here (a few lines over the same rank placements,
    DeLong et al. 1988 in the Sun-Xu 2014 rank form) because no maintained library provides it:
    the PyPI options are small single-maintainer packages that would add dependencies for ten
    lines of algebra. It is checked against the Hanley-McNeil standard error and against
    the bootstrap in tests/test_stats.py.

Inputs are numpy arrays in time order (oldest first); labels are 0/1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats
from scipy.optimize import curve_fit
from statsmodels.stats.multitest import multipletests

from evaluation import auc
from evaluation.auc import (  # one home (evaluation/auc.py); callers still import them from here
    placements,
    rank_auc,
)

Method = Literal["stationary", "circular", "delong"]
METHODS: tuple[str, ...] = ("stationary", "circular", "delong")

MONOTONIC = "monotonic"
VIOLATED = "violated"
INCONCLUSIVE = "inconclusive (within noise)"
VERDICTS = (MONOTONIC, VIOLATED, INCONCLUSIVE)

_CHUNK_CELLS = 4_000_000  # resample rows x days per vectorised AUC chunk (~32 MB of float64)


class AucCI(NamedTuple):
    auc: float
    lo: float
    hi: float


# ---------------------------------------------------------------------------- AUC building blocks


def _check_inputs(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``y`` as (n,) float and ``scores`` as (n, k) float; raise on anything unusable."""
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    if s.ndim != 2 or len(s) != len(y):
        raise ValueError(f"labels ({len(y)},) and scores {s.shape} must have the same number of days")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("AUC needs both classes in the labels")
    return y, s


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC (iid, exponential-score approximation).

    A closed formula, kept as the reference the tests check the estimators against.
    """
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(var)


def delong_cov(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong AUCs (k,) and their covariance (k, k) for score columns ``scores`` (n, k)."""
    y, s = _check_inputs(y, scores)
    yb = y.astype(bool)
    v10s, v01s, aucs = [], [], []
    for j in range(s.shape[1]):
        v10, v01 = placements(yb, s[:, j])
        v10s.append(v10)
        v01s.append(v01)
        aucs.append(v10.mean())
    v10m, v01m = np.array(v10s), np.array(v01s)  # (k, n_pos), (k, n_neg)
    cov = np.atleast_2d(np.cov(v10m)) / v10m.shape[1] + np.atleast_2d(np.cov(v01m)) / v01m.shape[1]
    return np.array(aucs), cov


# ---------------------------------------------------------------------------- block bootstrap


def choose_block_length(y: np.ndarray, scores: np.ndarray, horizon: int = 1) -> int:
    """Stationary-bootstrap block length: ``evaluation.auc.block_length`` (weighted contributions)."""
    y, s = _check_inputs(y, scores)
    return auc.block_length(y, s, horizon)


def resample_indices(
    n: int, reps: int, block_length: int, seed: int = 0, method: Method = "stationary"
) -> np.ndarray:
    """(reps, n) day indices drawn by ``arch``'s stationary or circular block bootstrap."""
    return auc.resample_indices(n, reps, block_length, seed, method)


def bootstrap_aucs(
    y: np.ndarray,
    scores: np.ndarray,
    *,
    reps: int = 2000,
    block_length: int | None = None,
    horizon: int = 1,
    seed: int = 0,
    method: Method = "stationary",
) -> tuple[np.ndarray, int]:
    """Joint bootstrap of the AUC of every score column on the *same* resampled days.

    Returns ``(aucs, block_length)`` with ``aucs`` of shape (reps_kept, k): resamples holding a
    single class are dropped. Sharing the resamples keeps the columns paired, so differences,
    orderings and the covariance between columns come out right.
    """
    y, s = _check_inputs(y, scores)
    if reps < 10:
        raise ValueError(f"reps must be at least 10, got {reps}")
    block = int(block_length) if block_length else choose_block_length(y, s, horizon)
    idx = resample_indices(len(y), reps, block, seed, method)  # (reps, n)
    chunk = max(1, _CHUNK_CELLS // len(y))
    out = np.empty((reps, s.shape[1]))
    for start in range(0, reps, chunk):
        rows = idx[start:start + chunk]  # (c, n)
        yb = y[rows]
        for j in range(s.shape[1]):
            out[start:start + chunk, j] = rank_auc(yb, s[:, j][rows])
    keep = np.isfinite(out).all(axis=1)
    return out[keep], block


# ---------------------------------------------------------------------------- public API


def auc_interval(
    y: np.ndarray,
    p: np.ndarray,
    alpha: float = 0.05,
    *,
    method: Method = "stationary",
    horizon: int = 1,
    block_length: int | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> dict:
    """AUC with a ``1 - alpha`` interval and everything needed to report how it was made."""
    _check_alpha(alpha)
    y, s = _check_inputs(y, p)
    if s.shape[1] != 1:
        raise ValueError("auc_interval takes one score column")
    auc = float(rank_auc(y, s[:, 0]))
    base = {"auc": auc, "alpha": alpha, "method": method, "n": len(y), "n_pos": int(y.sum()),
            "n_neg": int(len(y) - y.sum())}
    if method == "delong":
        _, cov = delong_cov(y, s)
        se = float(math.sqrt(cov[0, 0]))
        z = stats.norm.ppf(1 - alpha / 2)
        return {**base, "se": se, "lo": float(max(0.0, auc - z * se)), "hi": float(min(1.0, auc + z * se)),
                "block_length": None, "reps": None}
    boot, block = bootstrap_aucs(y, s, reps=reps, block_length=block_length, horizon=horizon,
                                 seed=seed, method=method)
    lo, hi = np.quantile(boot[:, 0], [alpha / 2, 1 - alpha / 2])
    return {**base, "se": float(boot[:, 0].std(ddof=1)), "lo": float(lo), "hi": float(hi),
            "block_length": block, "reps": reps, "reps_used": len(boot)}


def auc_ci(
    y: np.ndarray,
    p: np.ndarray,
    alpha: float = 0.05,
    *,
    method: Method = "stationary",
    horizon: int = 1,
    block_length: int | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> AucCI:
    """``(auc, lo, hi)``: ROC AUC with a ``1 - alpha`` interval (see the module doc for the method)."""
    r = auc_interval(y, p, alpha, method=method, horizon=horizon, block_length=block_length,
                     reps=reps, seed=seed)
    return AucCI(r["auc"], r["lo"], r["hi"])


def paired_auc_diff(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    alpha: float = 0.05,
    *,
    method: Method = "stationary",
    horizon: int = 1,
    block_length: int | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> dict:
    """AUC(a) - AUC(b) on the same days: ``diff``, ``lo``, ``hi``, ``se``, two-sided ``p_value``."""
    _check_alpha(alpha)
    y, s = _check_inputs(y, np.column_stack([np.asarray(p_a), np.asarray(p_b)]))
    auc_a, auc_b = (float(a) for a in rank_auc(y, s.T))
    diff = auc_a - auc_b
    base = {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "alpha": alpha, "method": method, "n": len(y)}
    if method == "delong":
        _, cov = delong_cov(y, s)
        var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        se = float(math.sqrt(max(var, 0.0)))
        z = stats.norm.ppf(1 - alpha / 2)
        p_value = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(diff) / se))
        return {**base, "se": se, "lo": float(diff - z * se), "hi": float(diff + z * se), "p_value": p_value,
                "block_length": None, "reps": None}
    boot, block = bootstrap_aucs(y, s, reps=reps, block_length=block_length, horizon=horizon,
                                 seed=seed, method=method)
    d = boot[:, 0] - boot[:, 1]
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return {**base, "se": float(d.std(ddof=1)), "lo": float(lo), "hi": float(hi),
            "p_value": _percentile_p(d), "block_length": block, "reps": reps, "reps_used": len(d)}


def _percentile_p(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: difference = 0, consistent with the percentile CI."""
    n = len(d)
    below = (1 + np.count_nonzero(d <= 0)) / (1 + n)
    above = (1 + np.count_nonzero(d >= 0)) / (1 + n)
    return float(min(1.0, 2 * min(below, above)))


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")


# ---------------------------------------------------------------------------- scaling verdict


def scaling_verdict(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    n_params: Mapping[str, int],
    alpha: float = 0.05,
    *,
    method: Method = "stationary",
    horizon: int = 1,
    block_length: int | None = None,
    reps: int = 2000,
    seed: int = 0,
    min_power_law_points: int = 4,
) -> dict:
    """Does test AUC rise with the real parameter count? Budgets are compared on the same days.

    ``scores[budget]`` are the test scores of each budget's model, aligned with ``y``.
    Every pair of budgets gets a paired comparison (larger minus smaller); p-values are
    Holm-adjusted over all pairs (``statsmodels``), which keeps the family-wise error at
    ``alpha``. The verdict:

    - ``violated``: some larger model is significantly *worse* than a smaller one;
    - ``monotonic``: every step up in size (adjacent budgets) is a significant improvement;
    - ``inconclusive (within noise)``: anything else; the data cannot order the budgets.

    A power law ``AUC - 0.5 = a * N**b`` is fitted only with at least ``min_power_law_points``
    budgets, weighted by the bootstrap covariance of the AUCs (they share test days), and
    reported with the exponent's interval.
    """
    _check_alpha(alpha)
    names = sorted(scores, key=lambda b: (int(n_params[b]), b))
    if len(names) < 2:
        raise ValueError("a scaling verdict needs at least two budgets")
    if len({int(n_params[b]) for b in names}) < len(names):
        raise ValueError("two budgets have the same real parameter count; they cannot be ordered")
    y, s = _check_inputs(y, np.column_stack([np.asarray(scores[b]) for b in names]))
    point = rank_auc(y, s.T)  # (k,)
    z = stats.norm.ppf(1 - alpha / 2)
    if method == "delong":
        _, cov = delong_cov(y, s)
        block = None
        boot = None
    else:
        boot, block = bootstrap_aucs(y, s, reps=reps, block_length=block_length, horizon=horizon,
                                     seed=seed, method=method)
        cov = np.atleast_2d(np.cov(boot, rowvar=False))

    budgets = []
    for j, b in enumerate(names):
        se = float(math.sqrt(cov[j, j]))
        if boot is None:
            lo, hi = max(0.0, point[j] - z * se), min(1.0, point[j] + z * se)
        else:
            lo, hi = np.quantile(boot[:, j], [alpha / 2, 1 - alpha / 2])
        budgets.append({"budget": b, "n_params": int(n_params[b]), "auc": float(point[j]), "se": se,
                        "lo": float(lo), "hi": float(hi)})

    comparisons = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):  # j is the larger model
            diff = float(point[j] - point[i])
            if boot is None:
                se = float(math.sqrt(max(cov[i, i] + cov[j, j] - 2 * cov[i, j], 0.0)))
                lo, hi = float(diff - z * se), float(diff + z * se)
                p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(diff) / se))
            else:
                d = boot[:, j] - boot[:, i]
                se = float(d.std(ddof=1))
                lo, hi = (float(q) for q in np.quantile(d, [alpha / 2, 1 - alpha / 2]))
                p = _percentile_p(d)
            comparisons.append({"larger": names[j], "smaller": names[i], "adjacent": j == i + 1,
                                "diff": diff, "se": se, "lo": float(lo), "hi": float(hi), "p_value": p})
    if boot is not None:
        check_resolution(len(boot), len(comparisons), alpha)
    reject, p_holm, _, _ = multipletests([c["p_value"] for c in comparisons], alpha=alpha, method="holm")
    for c, rej, ph in zip(comparisons, reject, p_holm, strict=True):
        c["p_holm"] = float(ph)
        c["significant"] = bool(rej)
        c["direction"] = ("larger better" if c["diff"] > 0 else "smaller better") if rej else "within noise"

    verdict, explanation = _decide(comparisons)
    return {
        "verdict": verdict,
        "explanation": explanation,
        "order": names,
        "budgets": budgets,
        "comparisons": comparisons,
        "power_law": power_law_fit([b["n_params"] for b in budgets], point, cov, alpha, min_power_law_points),
        "alpha": alpha,
        "correction": "holm",
        "method": method,
        "block_length": block,
        "reps": None if boot is None else reps,
        "n_days": len(y),
    }


def check_resolution(reps: int, n_tests: int, alpha: float) -> None:
    """A bootstrap p-value is at least ``2 / (reps + 1)``; Holm multiplies the smallest by the number
    of tests. With too few resamples no comparison could ever be significant, and every verdict
    would be "inconclusive" by construction rather than by the data."""
    floor = 2 * n_tests / (reps + 1)
    if floor >= alpha:
        need = math.ceil(2 * n_tests / alpha)
        raise ValueError(f"{reps} bootstrap resamples cannot reach significance over {n_tests} Holm-adjusted "
                         f"comparisons at alpha={alpha}; use at least {need} (2000+ recommended)")


def _decide(comparisons: Sequence[dict]) -> tuple[str, str]:
    reversals = [c for c in comparisons if c["significant"] and c["diff"] < 0]
    gains = [c for c in comparisons if c["significant"] and c["diff"] > 0]
    adjacent = [c for c in comparisons if c["adjacent"]]

    def fmt(c: dict) -> str:
        return f"{c['larger']} vs {c['smaller']}: {c['diff']:+.4f} (Holm p={c['p_holm']:.3g})"

    if reversals:
        return VIOLATED, "significant reversal(s): " + "; ".join(fmt(c) for c in reversals)
    if all(c["significant"] and c["diff"] > 0 for c in adjacent):
        return MONOTONIC, "every step up in size is a significant gain: " + "; ".join(fmt(c) for c in adjacent)
    noisy = [c for c in adjacent if not c["significant"]]
    text = "no significant reversal; step(s) within noise: " + "; ".join(fmt(c) for c in noisy)
    if gains:
        text += "; significant gain(s): " + "; ".join(fmt(c) for c in gains)
    return INCONCLUSIVE, text


def _power_law(n: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * n**b


def power_law_fit(
    n_params: Sequence[int], aucs: Sequence[float], cov: np.ndarray, alpha: float = 0.05, min_points: int = 4
) -> dict:
    """Fit ``AUC - 0.5 = a * (N / N_min)**b`` (``scipy.optimize.curve_fit``, generalised least squares).

    ``cov`` is the AUCs' covariance (k, k); with ``absolute_sigma=True`` the parameter
    covariance comes from it, and the exponent's interval uses a t distribution with
    ``k - 2`` degrees of freedom. Returns ``{"fitted": False, "reason": ...}`` when the fit is
    not warranted.
    """
    n = np.asarray(n_params, dtype=np.float64)
    a_obs = np.asarray(aucs, dtype=np.float64)
    if len(n) < max(3, min_points):
        return {"fitted": False, "reason": f"needs at least {max(3, min_points)} budgets, have {len(n)}"}
    if (a_obs <= 0.5).any():
        return {"fitted": False, "reason": "an AUC at or below 0.5 has no excess over chance to fit"}
    x = n / n.min()
    excess = a_obs - 0.5
    cov = np.asarray(cov, dtype=np.float64) + np.eye(len(n)) * 1e-12  # keep it invertible
    try:
        popt, pcov = curve_fit(_power_law, x, excess, p0=(excess[0], 0.0), sigma=cov, absolute_sigma=True,
                               maxfev=10_000)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
        return {"fitted": False, "reason": f"fit did not converge: {exc}".splitlines()[0]}
    perr = np.sqrt(np.diag(pcov))
    t = stats.t.ppf(1 - alpha / 2, df=len(n) - 2)
    b, b_se = float(popt[1]), float(perr[1])
    resid = excess - _power_law(x, *popt)
    chi2 = float(resid @ np.linalg.solve(cov, resid))
    return {
        "fitted": True,
        "form": "AUC - 0.5 = a * (N / N_min) ** b",
        "n_min": float(n.min()),
        "a": float(popt[0]), "a_se": float(perr[0]),
        "b": b, "b_se": b_se, "b_lo": b - t * b_se, "b_hi": b + t * b_se,
        "chi2": chi2, "dof": len(n) - 2,
        "chi2_p": float(stats.chi2.sf(chi2, len(n) - 2)) if len(n) > 2 else None,
        "exponent_excludes_zero": bool(b - t * b_se > 0 or b + t * b_se < 0),
    }
