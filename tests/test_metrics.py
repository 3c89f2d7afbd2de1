"""Metrics against hand-computed values on tiny arrays, and the degenerate-model flag."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import TierHpoError
from evaluation.metrics import (
    EPOCH_METRIC_NAMES,
    METRIC_NAMES,
    MetricsParams,
    classification_metrics,
    degeneracy,
    expected_calibration_error,
)

Y = np.array([0, 0, 1, 1])
P = np.array([0.15, 0.65, 0.45, 0.85])


def test_hand_computed_values():
    m = classification_metrics(Y, P, "test", base_rate=0.3, ece_bins=10)
    assert set(m) == {f"test/{name}" for name in METRIC_NAMES}
    expected = {
        "auc": 0.75,  # 3 of the 4 (negative, positive) pairs are ordered right
        # threshold 0.5 -> predictions [0, 1, 0, 1]: TP=1 FP=1 FN=1 TN=1
        "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "pos_rate": 0.5,
        # threshold 0.3 (train base rate) -> [0, 1, 1, 1]: TP=2 FP=1 FN=0 TN=1
        "accuracy_at_base": 0.75, "precision_at_base": 2 / 3, "recall_at_base": 1.0, "f1_at_base": 0.8,
        "pos_rate_at_base": 0.75,
        "brier": (0.15**2 + 0.65**2 + 0.55**2 + 0.15**2) / 4,
        "log_loss": -(math.log(0.85) + math.log(0.35) + math.log(0.45) + math.log(0.85)) / 4,
        "log_loss_base": -(2 * math.log(0.7) + 2 * math.log(0.3)) / 4,
        # one prediction per bin of width 0.1: mean |label - p|
        "ece": (0.15 + 0.65 + 0.55 + 0.15) / 4,
        "pred_mean": 0.525,
        "pred_std": math.sqrt((0.375**2 + 0.125**2 + 0.075**2 + 0.325**2) / 4),
        "pred_range_90": (0.65 + 0.85 * 0.2) - (0.15 + 0.15 * 0.3),  # linear-interpolated p95 - p5
        "pred_range": 0.7,
        "label_rate": 0.5,
    }
    expected["log_loss_skill"] = 1 - expected["log_loss"] / expected["log_loss_base"]
    for name, value in expected.items():
        assert m[f"test/{name}"] == pytest.approx(value, abs=1e-12), name


def test_a_subset_of_names_gives_the_same_values():
    full = classification_metrics(Y, P, "val", base_rate=0.3)
    part = classification_metrics(Y, P, "val", base_rate=0.3, names=EPOCH_METRIC_NAMES)
    assert part == {f"val/{n}": full[f"val/{n}"] for n in EPOCH_METRIC_NAMES}
    with pytest.raises(TierHpoError, match="unknown metric"):
        classification_metrics(Y, P, "val", base_rate=0.3, names=("auc", "kappa"))


def test_ece_bins_are_equal_width_and_weighted_by_count():
    # 2 bins: [0, .5) holds .15 (y=0) and .45 (y=1): |0.5 - 0.3| * 2/4; [.5, 1] likewise |0.5 - 0.75| * 2/4.
    assert expected_calibration_error(Y, P, n_bins=2) == pytest.approx(0.1 + 0.125)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]), n_bins=15) == 0.0


def test_auc_is_nan_for_one_class_and_other_metrics_still_defined():
    m = classification_metrics(np.zeros(5), np.linspace(0.1, 0.5, 5), "val", base_rate=0.2)
    assert math.isnan(m["val/auc"])
    assert m["val/precision"] == 0.0 and m["val/recall"] == 0.0  # zero_division -> 0
    assert math.isfinite(m["val/log_loss_skill"])


@pytest.mark.parametrize(
    ("y", "p", "base_rate", "message"),
    [
        (Y, P[:3], 0.3, "as many predictions"),
        (Y, np.array([0.1, 0.2, np.nan, 0.4]), 0.3, "finite probabilities"),
        (Y, np.array([0.1, 0.2, 1.3, 0.4]), 0.3, "finite probabilities"),
        (Y, P, 0.0, "base rate"),
    ],
)
def test_bad_input_is_refused(y, p, base_rate, message):
    with pytest.raises(TierHpoError, match=message):
        classification_metrics(y, p, "val", base_rate)


def test_degeneracy_flags_a_constant_predictor():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    constant = classification_metrics(y, np.full(400, 0.3), "val", base_rate=0.3)
    reason = degeneracy(constant, "val", pred_std_min=0.01, skill_min=0.0)
    assert reason is not None and "pred_std" in reason


def test_degeneracy_catches_a_collapse_that_auc_misses():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(int)
    collapsed = classification_metrics(y, 0.3 + 1e-4 * y, "val", base_rate=0.3)  # perfect ranks, no spread
    assert collapsed["val/auc"] == 1.0
    assert "collapsed" in degeneracy(collapsed, "val")


def test_degeneracy_flags_no_skill_and_passes_a_useful_model():
    rng = np.random.default_rng(2)
    y = (rng.random(400) < 0.3).astype(int)
    useful = np.clip(0.3 + 0.25 * (y - 0.3) + 0.05 * rng.standard_normal(400), 0.01, 0.99)
    assert degeneracy(classification_metrics(y, useful, "val", 0.3), "val") is None
    overconfident = np.where(rng.random(400) < 0.5, 0.99, 0.01)  # spread, but worse than the base rate
    reason = degeneracy(classification_metrics(y, overconfident, "val", 0.3), "val", 0.01, 0.0)
    assert "log_loss_skill" in reason
    assert "missing" in degeneracy({}, "val")


def test_metrics_params_validation():
    assert MetricsParams().ece_bins == 15
    with pytest.raises(TierHpoError, match="ece_bins"):
        MetricsParams(ece_bins=0)


def test_skill_against_the_split_rate_sees_a_prevalence_shift():
    """Train rate 0.25, split rate 0.12: a constant at the split rate has split skill 0 but train skill > 0."""
    from evaluation.metrics import classification_metrics

    y = np.r_[np.ones(12), np.zeros(88)]
    m = classification_metrics(y, np.full(100, 0.12), "test", base_rate=0.25)
    assert m["test/log_loss_skill"] > 0.02
    assert abs(m["test/log_loss_skill_split"]) < 1e-9
