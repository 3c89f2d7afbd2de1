"""AUC intervals, paired comparisons (evaluation.stats) and the scaling verdict (evaluation.scaling),
checked against known results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from evaluation import scaling, stats
from evaluation.auc import rank_auc


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC (iid, exponential-score approximation): the
    closed-form reference the estimators are checked against."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(var)


def binormal(auc: float, n_pos: int, n_neg: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """iid scores whose population AUC is ``auc``: N(d, 1) for positives, N(0, 1) for negatives."""
    d = np.sqrt(2) * st.norm.ppf(auc)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    p = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    order = rng.permutation(len(y))
    return y[order], p[order]


def models_on_same_days(aucs: list[float], n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One label series and one score series per target AUC (independent noise per model)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    scores = [np.sqrt(2) * st.norm.ppf(a) * y + rng.standard_normal(n) for a in aucs]
    return y, scores


def overlapping_labels(n: int, horizon: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels that look ``horizon`` days ahead (so neighbours share days) and a persistent score."""
    shocks = rng.standard_normal(n + horizon)
    future = np.convolve(shocks, np.ones(horizon), mode="valid")[1:n + 1]  # sum of the next h shocks
    level = np.zeros(n)
    for t in range(1, n):  # AR(1) score: a slowly moving signal, as from overlapping input windows
        level[t] = 0.9 * level[t - 1] + rng.standard_normal()
    y = (future + 0.5 * level > 0).astype(float)
    return y, level


# ---------------------------------------------------------------------------- building blocks


def test_rank_auc_matches_sklearn_including_ties_and_vectorises():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (4, 300)).astype(float)
    p = np.round(rng.random((4, 300)) + 0.3 * y, 1)  # heavy ties
    got = rank_auc(y, p)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, [roc_auc_score(y[i], p[i]) for i in range(4)], atol=1e-12)
    assert np.isnan(rank_auc(np.ones(5), np.arange(5.0)))


def test_hanley_mcneil_reference_value():
    # Hanley & McNeil (1982): AUC 0.72 with 500 positives and 500 negatives -> SE about 0.016.
    assert hanley_mcneil_se(0.72, 500, 500) == pytest.approx(0.016, abs=0.0005)


def test_iid_standard_errors_match_hanley_mcneil():
    y, p = binormal(0.72, 500, 500, np.random.default_rng(3))
    hm = hanley_mcneil_se(0.72, 500, 500)
    boot = stats.auc_interval(y, p, block_length=1, reps=1000, seed=1)  # block 1 = iid bootstrap
    delong = stats.auc_interval(y, p, method="delong")
    assert boot["auc"] == pytest.approx(roc_auc_score(y, p))
    assert boot["se"] == pytest.approx(hm, rel=0.12)
    assert delong["se"] == pytest.approx(hm, rel=0.08)
    assert boot["lo"] < boot["auc"] < boot["hi"]
    assert boot["hi"] - boot["lo"] == pytest.approx(2 * 1.96 * hm, rel=0.15)
    # on iid data the automatic block length stays short and gives the same answer
    auto = stats.auc_interval(y, p, reps=1000, seed=1)
    assert auto["block_length"] <= 3
    assert auto["se"] == pytest.approx(hm, rel=0.15)


def test_block_bootstrap_tracks_the_true_spread_when_labels_overlap():
    horizon, n = 5, 750
    rng = np.random.default_rng(7)
    # the true sampling spread of the AUC, from many independent series
    true_sd = np.std([rank_auc(*overlapping_labels(n, horizon, rng)) for _ in range(300)])
    block, delong = [], []
    for _ in range(4):
        y, p = overlapping_labels(n, horizon, rng)
        block.append(stats.auc_interval(y, p, horizon=horizon, reps=600, seed=0)["se"])
        delong.append(stats.auc_interval(y, p, method="delong")["se"])
    # iid DeLong badly understates the spread; the block bootstrap gets close to it
    assert np.mean(delong) < 0.6 * true_sd
    assert np.mean(block) == pytest.approx(true_sd, rel=0.3)


def test_block_length_floor_is_the_horizon():
    y, p = binormal(0.7, 200, 200, np.random.default_rng(0))
    assert stats.choose_block_length(y, p, horizon=5) >= 5
    assert stats.choose_block_length(y, p, horizon=1) >= 1


def test_auc_interval_is_seeded():
    y, p = binormal(0.7, 150, 150, np.random.default_rng(2))
    first = stats.auc_interval(y, p, reps=200, seed=5)
    assert first == stats.auc_interval(y, p, reps=200, seed=5)
    assert first["lo"] < first["auc"] < first["hi"]
    circ = stats.auc_interval(y, p, reps=200, seed=5, method="circular", block_length=4)
    assert circ["lo"] < circ["auc"] < circ["hi"]


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        (np.ones(10), np.arange(10.0), "both classes"),
        (np.r_[np.ones(5), np.zeros(5)], np.arange(9.0), "same number of days"),
        (np.r_[np.ones(5), np.zeros(4), 2.0], np.arange(10.0), "0/1"),
        (np.r_[np.ones(5), np.zeros(5)], np.r_[np.arange(9.0), np.nan], "NaN"),
    ],
)
def test_bad_inputs_are_rejected(y, p, message):
    with pytest.raises(ValueError, match=message):
        stats.auc_interval(y, p, reps=20)


# ---------------------------------------------------------------------------- paired comparison


def test_identical_models_have_no_difference():
    y, p = binormal(0.7, 200, 200, np.random.default_rng(0))
    r = stats.paired_auc_diff(y, p, p.copy(), reps=300)
    assert r["diff"] == 0 and r["lo"] == 0 and r["hi"] == 0 and r["p_value"] == 1.0


@pytest.mark.parametrize("method", ["stationary", "delong"])
def test_paired_difference_detects_a_clear_gap_and_not_a_tiny_one(method):
    y, (good, bad, twin) = models_on_same_days([0.80, 0.65, 0.805], n=750, seed=4)
    clear = stats.paired_auc_diff(y, good, bad, method=method, reps=500)
    assert clear["diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad))
    assert clear["p_value"] < 0.01 and clear["lo"] > 0
    noise = stats.paired_auc_diff(y, good, twin, method=method, reps=500)
    assert noise["p_value"] > 0.05 and noise["lo"] < 0 < noise["hi"]


def test_bootstrap_and_delong_agree_on_iid_pairs():
    y, (a, b) = models_on_same_days([0.75, 0.70], n=1000, seed=11)
    boot = stats.paired_auc_diff(y, a, b, block_length=1, reps=1000)
    delong = stats.paired_auc_diff(y, a, b, method="delong")
    assert boot["se"] == pytest.approx(delong["se"], rel=0.15)
    # the percentile p-value and the percentile CI tell the same story
    assert (boot["p_value"] < 0.05) == (boot["lo"] > 0 or boot["hi"] < 0)


# ---------------------------------------------------------------------------- scaling verdict

PARAMS3 = {"2M": 2_010_000, "20M": 19_870_000, "200M": 201_300_000}


def verdict_for(aucs: list[float], n: int = 750, seed: int = 0, reps: int = 500, **kwargs) -> dict:
    y, scores = models_on_same_days(aucs, n=n, seed=seed)
    names = list(PARAMS3)[: len(aucs)] if len(aucs) <= 3 else [f"b{i}" for i in range(len(aucs))]
    params = PARAMS3 if len(aucs) <= 3 else {b: 10 ** (6 + i) for i, b in enumerate(names)}
    return scaling.scaling_verdict(y, dict(zip(names, scores, strict=True)), params, reps=reps, **kwargs)


def test_clear_monotonic_scaling():
    r = verdict_for([0.60, 0.70, 0.80])
    assert r["verdict"] == scaling.MONOTONIC
    assert r["order"] == ["2M", "20M", "200M"]
    assert all(c["significant"] and c["diff"] > 0 for c in r["comparisons"])
    assert all(c["p_holm"] >= c["p_value"] for c in r["comparisons"])
    assert [b["n_params"] for b in r["budgets"]] == sorted(PARAMS3.values())


def test_clear_reversal_is_violated():
    r = verdict_for([0.80, 0.70, 0.60])
    assert r["verdict"] == scaling.VIOLATED
    assert "200M vs 2M" in r["explanation"]


def test_the_original_studys_numbers_are_within_noise():
    # 2M 0.7178, 20M 0.7246, 200M 0.7147 on ~750 test days: the original "VIOLATED" claim
    r = verdict_for([0.7178, 0.7246, 0.7147])
    assert r["verdict"] == scaling.INCONCLUSIVE
    assert not any(c["significant"] for c in r["comparisons"])
    for b in r["budgets"]:
        assert 0.04 < b["hi"] - b["lo"] < 0.09  # roughly +-0.03 around each AUC


def test_a_plateau_is_not_called_monotonic():
    r = verdict_for([0.62, 0.78, 0.78], n=1500)
    assert r["verdict"] == scaling.INCONCLUSIVE
    assert "significant gain" in r["explanation"]


def test_verdict_with_delong_and_order_by_real_parameter_count():
    y, (a, b) = models_on_same_days([0.8, 0.6], n=750, seed=2)
    r = scaling.scaling_verdict(y, {"big-name": a, "small-name": b}, {"big-name": 10, "small-name": 10_000},
                                method="delong")
    assert r["order"] == ["big-name", "small-name"]  # ordered by count, not by name
    assert r["verdict"] == scaling.VIOLATED
    assert r["power_law"]["fitted"] is False


def test_power_law_only_with_enough_budgets():
    assert verdict_for([0.6, 0.7, 0.8])["power_law"] == {"fitted": False, "reason": "needs at least 4 budgets, have 3"}
    # excess over chance doubles with each 10x: exponent log10(2) ~ 0.30
    r = verdict_for([0.5 + 0.02 * 2**i for i in range(4)], n=4000, seed=3)
    fit = r["power_law"]
    assert fit["fitted"] and fit["dof"] == 2
    assert fit["b_lo"] < np.log10(2) < fit["b_hi"]
    assert fit["exponent_excludes_zero"]


def test_scaling_verdict_input_errors():
    y, (a, b) = models_on_same_days([0.7, 0.7], n=100, seed=0)
    with pytest.raises(ValueError, match="at least two budgets"):
        scaling.scaling_verdict(y, {"x": a}, {"x": 1})
    with pytest.raises(ValueError, match="same real parameter count"):
        scaling.scaling_verdict(y, {"x": a, "z": b}, {"x": 5, "z": 5})


def test_too_few_resamples_for_holm_is_refused():
    # 4 budgets = 6 comparisons; with 100 resamples the smallest Holm p-value is 6 * 2/101 > 0.05
    with pytest.raises(ValueError, match="cannot reach significance"):
        verdict_for([0.6, 0.7, 0.8, 0.9], reps=100)
