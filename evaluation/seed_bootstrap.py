"""Seed-aware, paired AUC comparisons: a two-level bootstrap over training seeds and blocks of test days.

What a verdict has to carry
    Retraining one configuration with another seed moves its AUC by about as much as the
    test-day sampling error of a difference (issue 12), so a comparison of one model per
    budget reads seed luck as signal. Each model therefore arrives as a matrix of scores,
    ``(n_seeds, n_days)``, one row per independently trained seed, and what is compared is the
    *seed ensemble*: the AUC of the seed-mean score (what is promoted and served).

The two levels (one resample ``b``)
    1. Days: one draw of ``arch.bootstrap.StationaryBootstrap`` indices over the test days, in
       time order, shared by every model, so all models are scored on the same days and
       differences stay paired.
    2. Seeds: per model, its seeds are drawn with replacement (independently across models:
       seeds of different models are independent trainings), and the resampled seed-mean score
       is scored on the day draw of step 1.
    The seed level is written here (``numpy``) because ``arch`` resamples one axis of one array;
    it is a weighted mean: ``counts_b @ scores / S``. With ``S`` seeds, the with-replacement mean
    has variance ``(S - 1) / S`` of the seed-mean's true sampling variance (0.67 at the default
    3 seeds, which would make the test anti-conservative), so the resampled deviation from the
    seed mean is scaled by ``sqrt(S / (S - 1))`` (the adjusted bootstrap of Davison & Hinkley
    1997, section 3.3). With one seed the seed level is skipped.

Block length
    Once per ``Comparison``: ``evaluation.auc.block_length`` (Politis-White on the weighted
    per-day AUC contributions of every model's seed-mean score, the largest estimate, floored at
    the label horizon), so every interval and every difference of one comparison uses the same
    blocks, and the same numbers always get the same interval. Seed draws are keyed by the model's
    name, so a model's interval does not depend on which other models share the comparison
    (given the same block length: pass ``block_length`` to pin it across comparisons).

Intervals and p-values: bias-corrected percentile intervals. A resampled seed-mean is noisier
than the seed-mean itself whenever the draw repeats a seed, and the AUC of a noisier score is
lower, so the raw bootstrap distribution sits below the point estimate (with 2 seeds a test AUC of
0.834 got [0.695, 0.875]: the skew issue 12 warned about). The distribution is therefore shifted by
its bias (``mean(boot) - point``) before its quantiles are read; the p-value is
``evaluation.auc.percentile_p`` on the same shifted distribution, so it agrees with the interval. Holm adjustment: ``statsmodels.stats.multitest.multipletests``.

Per-day losses for MCS/SPA (``losses``): the log loss of each day's seed-mean probability.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from evaluation.auc import block_length as estimate_block_length
from evaluation.auc import percentile_p, rank_auc, resample_indices

_CHUNK_CELLS = 2_000_000  # resample rows x days per vectorised chunk (~16 MB of float64)
_EPS = 1e-15


@dataclass(frozen=True)
class Interval:
    """A point estimate with its ``1 - alpha`` interval; ``p_value`` (H0: 0) for differences."""

    estimate: float
    low: float
    high: float
    p_value: float | None = None
    p_adjusted: float | None = None  # family-wise (Holm) p-value, when the interval is one of a family
    level: float | None = None  # coverage of [low, high] when it is not 1 - alpha (a family's interval)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


class Comparison:
    """Seed-aware paired comparison of models on the same test days (module doc).

    ``y``: (n_days,) 0/1 labels in time order. ``scores[name]``: (n_seeds, n_days) scores (or
    (n_days,) for a single seed / an untrained score such as a baseline).
    """

    def __init__(
        self,
        y: np.ndarray,
        scores: Mapping[str, np.ndarray],
        alpha: float = 0.05,
        n_boot: int = 2000,
        seed: int = 0,
        *,
        horizon: int = 1,
        block_length: int | None = None,
    ) -> None:
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        if n_boot < 10:
            raise ValueError(f"n_boot must be at least 10, got {n_boot}")
        self.y = np.asarray(y, dtype=np.float64).ravel()
        if not np.isin(self.y, (0.0, 1.0)).all():
            raise ValueError("labels must be 0/1")
        n_pos = int(self.y.sum())
        if n_pos == 0 or n_pos == len(self.y):
            raise ValueError("AUC needs both classes in the labels")
        if not scores:
            raise ValueError("a comparison needs at least one model")
        self.scores: dict[str, np.ndarray] = {}
        for name, s in scores.items():
            m = np.atleast_2d(np.asarray(s, dtype=np.float64))
            if m.ndim != 2 or m.shape[1] != len(self.y):
                raise ValueError(f"{name}: scores {np.shape(s)} must be (n_seeds, {len(self.y)})")
            if not np.isfinite(m).all():
                raise ValueError(f"{name}: scores contain NaN or inf")
            self.scores[name] = m
        self.alpha, self.n_boot, self.seed = float(alpha), int(n_boot), int(seed)
        means = np.column_stack([m.mean(axis=0) for m in self.scores.values()])
        self.block_length = int(block_length) if block_length else estimate_block_length(self.y, means, horizon)
        self._days = resample_indices(len(self.y), self.n_boot, self.block_length, self.seed)
        self._boot: dict[str, np.ndarray] = {}
        yb = self.y[self._days]
        self._valid = (yb.sum(axis=1) > 0) & (yb.sum(axis=1) < len(self.y))  # both classes in the resample

    @property
    def names(self) -> list[str]:
        return list(self.scores)

    def n_seeds(self, name: str) -> int:
        return self.scores[self._known(name)].shape[0]

    def mean_score(self, name: str) -> np.ndarray:
        return self.scores[self._known(name)].mean(axis=0)

    def point(self, name: str) -> float:
        """AUC of the seed-mean score on the original days."""
        return float(rank_auc(self.y, self.mean_score(name)))

    def bootstrap(self, name: str) -> np.ndarray:
        """(reps_kept,) resampled AUCs of ``name`` (resamples with one class dropped), cached."""
        name = self._known(name)
        if name not in self._boot:
            self._boot[name] = self._resample(name)[self._valid]
        return self._boot[name]

    def auc(self, name: str) -> Interval:
        point = self.point(name)
        boot = _centred(self.bootstrap(name), point)
        lo, hi = np.quantile(boot, [self.alpha / 2, 1 - self.alpha / 2])
        return Interval(point, float(lo), float(hi))

    def diff(self, a: str, b: str, alpha: float | None = None) -> Interval:
        """AUC(a) - AUC(b) of the seed-mean scores, paired on the same resampled days; the
        interval at ``1 - alpha`` (default: the comparison's alpha)."""
        alpha = self.alpha if alpha is None else alpha
        point = self.point(a) - self.point(b)
        d = _centred(self.bootstrap(a) - self.bootstrap(b), point)
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        return Interval(point, float(lo), float(hi), percentile_p(d))

    def holm_family(self, pairs: Sequence[tuple[str, str]]) -> list[Interval]:
        """``diff(a, b)`` for each pair, in order, with Holm-adjusted p-values and intervals whose
        level is the one the Holm step-down tests that pair at, so an interval excludes 0 when
        (up to the bootstrap's discreteness) its adjusted p is below alpha (issue 12: intervals and readings, one adjustment).

        Holm tests the j-th smallest raw p at ``alpha / (m - j + 1)`` and stops at the first
        failure f; a pair after f is shown at f's level. By the duality of ``percentile_p`` with
        the percentile interval on one distribution, a rejected pair's interval then excludes 0
        and every other pair's includes it. Hand-written because statsmodels' ``multipletests``
        adjusts p-values only; simultaneous Holm intervals in closed form do not exist, and
        Bonferroni intervals (all at ``alpha / m``) would disagree with Holm's readings.
        """
        if not pairs:
            return []
        raw = [self.diff(a, b) for a, b in pairs]
        adjusted = multipletests([d.p_value for d in raw], alpha=self.alpha, method="holm")[1]
        m = len(pairs)
        order = sorted(range(m), key=lambda i: raw[i].p_value)
        levels, failed_at = [0.0] * m, None
        for step, i in enumerate(order):
            level = self.alpha / (m - step)
            if failed_at is None and raw[i].p_value >= level:
                failed_at = level
            levels[i] = failed_at if failed_at is not None else level
        out = []
        for (a, b), level, p_adj in zip(pairs, levels, adjusted, strict=True):
            d = self.diff(a, b, alpha=level)
            out.append(Interval(d.estimate, d.low, d.high, d.p_value, float(p_adj), 1 - level))
        return out

    def holm(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Holm-adjusted p-values of ``diff(a, b)`` for each ``(a, b)`` in ``pairs``, in order."""
        if not pairs:
            return []
        return [float(d.p_adjusted) for d in self.holm_family(pairs)]

    def losses(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """(n_days, models) log loss of each day's seed-mean probability (for MCS and SPA)."""
        cols = {}
        for name in names if names is not None else self.names:
            p = self.mean_score(name)
            if p.min() < 0 or p.max() > 1:
                raise ValueError(f"{name}: log loss needs probabilities in [0, 1]; its scores are not")
            p = np.clip(p, _EPS, 1 - _EPS)
            cols[name] = -(self.y * np.log(p) + (1 - self.y) * np.log1p(-p))
        return pd.DataFrame(cols)

    def _known(self, name: str) -> str:
        if name not in self.scores:
            raise KeyError(f"unknown model {name!r}; the comparison has {self.names}")
        return name

    def _resample(self, name: str) -> np.ndarray:
        m = self.scores[name]  # (S, n)
        n_seeds, n = m.shape
        mean = m.mean(axis=0)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        draws = rng.integers(0, n_seeds, size=(self.n_boot, n_seeds))  # seed level, keyed by the model
        scale = math.sqrt(n_seeds / (n_seeds - 1)) if n_seeds > 1 else 0.0
        out = np.empty(self.n_boot)
        chunk = max(1, _CHUNK_CELLS // n)
        for start in range(0, self.n_boot, chunk):
            rows = slice(start, start + chunk)
            days = self._days[rows]  # (c, n)
            if n_seeds > 1:
                counts = np.stack([np.bincount(d, minlength=n_seeds) for d in draws[rows]]) / n_seeds  # (c, S)
                s = mean + scale * (counts @ m - mean)  # (c, n) adjusted resampled seed-mean
                s = np.take_along_axis(s, days, axis=1)
            else:
                s = mean[days]
            out[rows] = rank_auc(self.y[days], s)
        return out


def _centred(boot: np.ndarray, point: float) -> np.ndarray:
    """The bootstrap distribution shifted so that its mean is the point estimate (bias correction)."""
    return boot - (boot.mean() - point)
