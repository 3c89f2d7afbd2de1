"""The seed-aware comparison and the verdict words, on synthetic scores with a known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.seed_bootstrap import Comparison
from evaluation.selection import mcs_set
from evaluation.verdicts import tier_verdict


def _scores(y: np.ndarray, skill: float, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """(seeds, days) probabilities whose AUC grows with ``skill``; each seed adds its own noise."""
    logit = skill * (2 * y - 1) + rng.normal(size=(seeds, y.size))
    return 1 / (1 + np.exp(-logit))


def _comparison(skills: dict[str, float], days: int = 750, seed: int = 0) -> Comparison:
    rng = np.random.default_rng(seed)
    y = (rng.random(days) < 0.2).astype(int)
    scores = {name: _scores(y, skill, 3, rng) for name, skill in skills.items()}
    return Comparison(y, scores, n_boot=300, seed=seed)


def test_a_real_gap_is_detected_and_no_gap_is_not():
    cmp = _comparison({"strong": 1.5, "weak": 0.3, "weak_twin": 0.3})
    gap = cmp.diff("strong", "weak")
    assert gap.estimate > 0 and gap.low > 0 and gap.p_value < 0.05
    assert cmp.diff("weak", "weak_twin").low < 0 < cmp.diff("weak", "weak_twin").high
    assert cmp.auc("strong").low < cmp.point("strong") < cmp.auc("strong").high


def test_the_block_length_is_computed_once_so_the_same_auc_gets_the_same_interval():
    cmp = _comparison({"a": 1.0, "b": 0.5})
    first, block = cmp.auc("a"), cmp.block_length
    assert cmp.auc("a") == first and cmp.block_length == block >= 1


def test_tier_words_follow_the_signal():
    assert tier_verdict(_comparison({"a20": 0.3, "a50": 1.2, "a100": 1.2}), ("a20", "a50", "a100")).word == (
        "more features help"
    )
    assert tier_verdict(_comparison({"a20": 0.8, "a50": 0.8, "a100": 0.8}), ("a20", "a50", "a100")).word == (
        "inconclusive"
    )


def test_the_model_confidence_set_keeps_the_best_and_drops_the_clearly_worse():
    cmp = _comparison({"best": 1.5, "noise": 0.0})
    kept = mcs_set(cmp.losses(["best", "noise"]), block=cmp.block_length, reps=300)
    assert kept == ["best"]
    assert isinstance(cmp.losses(["best"]), pd.DataFrame)


def test_holm_family_intervals_agree_with_the_adjusted_readings():
    """Each difference's interval is at the level its Holm step tests it at, so an interval excludes 0
    exactly where the Holm-adjusted p is below alpha (issue 12: one adjustment for both)."""
    agreements, mixed = 0, 0
    for seed in range(6):
        cmp = _comparison({"best": 1.6, "near": 1.5, "mid": 1.0, "far": 0.3}, days=750, seed=seed)
        family = cmp.holm_family([("best", "near"), ("best", "mid"), ("best", "far")])
        raw = [cmp.diff("best", n) for n in ("near", "mid", "far")]
        for d, r in zip(family, raw, strict=True):
            assert d.estimate == r.estimate and d.p_value == r.p_value
            assert d.low <= r.low and d.high >= r.high  # never narrower than the unadjusted interval
            assert 0.95 <= d.level < 1
            assert (d.low > 0 or d.high < 0) == (d.p_adjusted < cmp.alpha)
            agreements += 1
        significant = {d.p_adjusted < cmp.alpha for d in family}
        mixed += len(significant) == 2
        assert cmp.holm([("best", "near"), ("best", "mid"), ("best", "far")]) == [d.p_adjusted for d in family]
    assert agreements == 18 and mixed >= 1, "the worlds should give both significant and non-significant pairs"


def test_the_bootstrap_p_value_is_the_exact_dual_of_the_percentile_interval():
    """p < a exactly when the interpolated percentile interval at 1 - a excludes 0, at every level
    (the count-based p-value disagreed near the boundary with 200 resamples)."""
    from evaluation.auc import percentile_p

    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(400):
        n = int(rng.integers(50, 400))
        d = rng.normal(rng.normal() * 2, 1, size=n)
        if trial % 7 == 0:
            d[: int(rng.integers(1, n))] = 0.0  # ties at zero (identical models on many resamples)
        p = percentile_p(d)
        for a in (a for a in (0.05, 0.025, 1 / 60, 0.0125) if a > 1 / (n + 1)):  # above the p floor
            lo, hi = np.quantile(d, [a / 2, 1 - a / 2])
            assert (lo > 0 or hi < 0) == (p < a), (trial, a, p, lo, hi)
            checked += 1
    assert checked > 1500 and percentile_p(np.zeros(100)) == 1.0
