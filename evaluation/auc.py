"""AUC building blocks shared by ``evaluation.stats`` and ``evaluation.seed_bootstrap``.

AUC per resample (``rank_auc``)
    The Mann-Whitney statistic ``U / (n_pos * n_neg)`` from ``scipy.stats.rankdata`` with
    averaged ties along the last axis. It equals ``sklearn.metrics.roc_auc_score`` exactly (ties
    included) and scores thousands of resamples in one vectorised call, where ``roc_auc_score``
    per resample is ~100x slower.

Block length (``block_length``)
    ``max(horizon, ceil(L))`` where ``L`` is ``arch.bootstrap.optimal_block_length``
    (Politis-White 2004 with the Patton-Politis-White 2009 correction) of the series whose *mean*
    the AUC is: the weighted per-day contributions ``c_t``. With ``pi`` the positive share,
    ``AUC = mean_t c_t`` for ``c_t = V10_t / (2 pi)`` on a positive day and ``V01_t / (2 (1 - pi))``
    on a negative day (``V10``/``V01`` are DeLong's placement values). Politis-White picks the
    block length for the mean of a series, so this is the series to measure; the unweighted
    placements over-weight the (rarer) positives' neighbours and overstate the length. With
    several score columns the largest estimate wins, so one number serves every column and
    every difference of a comparison.

``percentile_p``
    The two-sided percentile-bootstrap p-value that is the exact dual of the percentile interval
    (numpy's interpolated quantiles), so "the interval excludes 0" and "p < alpha" agree at every
    level, which is what lets a Holm family's intervals follow its adjusted readings.
"""

from __future__ import annotations

import math

import numpy as np
from arch.bootstrap import CircularBlockBootstrap, StationaryBootstrap, optimal_block_length
from scipy import stats


def rank_auc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC along the last axis: ``y`` and ``scores`` of shape (..., n) -> (...,); NaN for one class."""
    y = np.asarray(y, dtype=np.float64)
    ranks = stats.rankdata(scores, axis=-1)  # (..., n), ties averaged
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    u = (ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def placements(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values: (V10 for each positive day, V01 for each negative day), in time order.

    V10_i = share of negatives that positive i outranks (ties count 1/2); V01_j = share of
    positives that outrank negative j. ``mean(V10) == mean(V01) == AUC``.
    """
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    r_all = stats.rankdata(p)
    v10 = (r_all[y] - stats.rankdata(p[y])) / n_neg
    v01 = 1.0 - (r_all[~y] - stats.rankdata(p[~y])) / n_pos
    return v10, v01


def auc_contributions(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each day's weighted AUC contribution ``c_t`` (module doc), centred: ``mean(c) + AUC == AUC``."""
    yb = np.asarray(y, dtype=bool)
    v10, v01 = placements(yb, p)
    pi = yb.mean()
    out = np.empty(len(yb))
    out[yb] = v10 / (2 * pi)
    out[~yb] = v01 / (2 * (1 - pi))
    return out - out.mean()


def block_length(y: np.ndarray, score_columns: np.ndarray, horizon: int = 1) -> int:
    """``max(horizon, ceil(Politis-White))`` over the weighted contributions of each (n, k) column."""
    s = np.asarray(score_columns, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    estimates = [optimal_block_length(auc_contributions(y, s[:, j]))["stationary"].iloc[0] for j in range(s.shape[1])]
    best = max((e for e in estimates if np.isfinite(e)), default=1.0)
    return int(max(1, horizon, math.ceil(best)))


def resample_indices(n: int, reps: int, block: int, seed: int = 0, method: str = "stationary") -> np.ndarray:
    """(reps, n) day indices drawn by ``arch``'s stationary (or circular) block bootstrap."""
    if method not in ("stationary", "circular"):
        raise ValueError(f"resampling method must be 'stationary' or 'circular', got {method!r}")
    cls = StationaryBootstrap if method == "stationary" else CircularBlockBootstrap
    bs = cls(int(block), np.arange(n, dtype=np.int64), seed=int(seed))
    out = np.empty((reps, n), dtype=np.int64)
    for r, (pos, _) in enumerate(bs.bootstrap(reps)):
        out[r] = pos[0]
    return out


def percentile_p(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: difference = 0, the exact dual of the percentile interval
    ``np.quantile(d, [a / 2, 1 - a / 2])`` (numpy's default linear interpolation): the interval at
    level ``1 - a`` excludes 0 exactly when ``p < a``, for every ``a`` above the floor
    ``1 / (reps + 1)``. Hand-written because that duality is what lets a family's intervals and its
    adjusted readings agree (``seed_bootstrap.Comparison.holm_family``); a count-based p-value
    (``(1 + count) / (1 + reps)``) disagrees with the interpolated quantiles near the boundary."""
    d = np.sort(np.asarray(d, dtype=np.float64).ravel())
    n = len(d)
    if n < 2:
        return 1.0

    def crossing(k: int) -> float:
        """Quantile level where the interpolated quantile function passes 0 between d[k-1] and d[k]."""
        if k == 0:
            return 0.0
        if k == n:
            return 1.0
        lo, hi = d[k - 1], d[k]
        return (k - 1 + (0.0 - lo) / (hi - lo)) / (n - 1)

    q_hi = crossing(int(np.count_nonzero(d <= 0)))  # quantile(q) > 0 exactly for q > q_hi
    q_lo = crossing(int(np.count_nonzero(d < 0)))  # quantile(q) < 0 exactly for q < q_lo
    return float(min(1.0, max(2 * min(q_hi, 1 - q_lo), 1.0 / (n + 1))))
