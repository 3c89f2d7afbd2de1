"""Calibration: every method repairs a deliberately miscalibrated model without touching its ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score

from common.errors import TierHpoError
from evaluation.calibration import (
    METHODS,
    CalibrationConfig,
    Calibrator,
    choose_calibrator,
    fit_calibrator,
    sklearn_calibrator,
)


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from expit(z); the 'model' reports 3z + 1: overconfident and biased upwards."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(np.int64)
    return 3.0 * z + 1.0, y


def newly_tied_pair_bound(raw: np.ndarray, cal: np.ndarray, y: np.ndarray) -> float:
    """Largest AUC change that ties alone can cause: 0.5 per positive-negative pair tied by ``cal`` but not by ``raw``."""
    pos, neg = y == 1, y == 0
    tied_cal = cal[pos][:, None] == cal[neg][None, :]
    tied_raw = raw[pos][:, None] == raw[neg][None, :]
    return 0.5 * np.sum(tied_cal & ~tied_raw) / (pos.sum() * neg.sum())


@pytest.mark.parametrize("method", METHODS)
def test_each_method_improves_log_loss_and_keeps_auc(method):
    val_z, val_y = miscalibrated(3000, seed=1)
    test_z, test_y = miscalibrated(3000, seed=2)
    cal = fit_calibrator(val_z, val_y, method)
    p_raw, p_cal = expit(test_z), cal.apply(test_z)

    assert log_loss(test_y, p_cal) < log_loss(test_y, p_raw) - 0.05
    order = np.argsort(test_z, kind="stable")
    assert np.all(np.diff(p_cal[order]) >= 0), "calibration must be a non-decreasing map of the logit"
    auc_raw, auc_cal = roc_auc_score(test_y, p_raw), roc_auc_score(test_y, p_cal)
    if method == "isotonic":
        assert abs(auc_cal - auc_raw) <= newly_tied_pair_bound(test_z, p_cal, test_y) + 1e-12
    else:  # strictly increasing maps: identical ranking, identical AUC
        assert auc_cal == pytest.approx(auc_raw, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_exported_map_reproduces_sklearn(method):
    z, y = miscalibrated(2000, seed=3)
    grid = np.linspace(-15, 15, 301)  # includes values outside the fitted range (isotonic clips)
    sk = sklearn_calibrator(method).fit(z[:, None], y).predict_proba(grid[:, None])[:, 1]
    cal = fit_calibrator(z, y, method)
    np.testing.assert_allclose(cal.apply(grid), sk, rtol=0, atol=1e-12)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(again.apply(grid), cal.apply(grid))


def test_choice_picks_a_calibrator_for_a_miscalibrated_model_and_records_why():
    z, y = miscalibrated(3000, seed=4)
    choice = choose_calibrator(z, y, CalibrationConfig(cv_folds=5))
    assert choice.calibrator.method != "none"
    assert set(choice.val_log_loss) == {"none", *METHODS}
    best = choice.calibrator.method
    assert choice.val_log_loss[best] == min(choice.val_log_loss.values())
    assert choice.reason.startswith(f"{best}: lowest log loss on val")
    assert choice.val_log_loss[best] < choice.val_log_loss["none"]


def test_calibrated_model_keeps_none_unless_a_method_helps():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, 800)
    y = (rng.random(800) < expit(z)).astype(np.int64)
    choice = choose_calibrator(z, y)
    # Already calibrated: whatever wins, it cannot beat 'none' by more than noise.
    assert choice.val_log_loss[choice.calibrator.method] <= choice.val_log_loss["none"]
    assert choice.val_log_loss["none"] - choice.val_log_loss[choice.calibrator.method] < 0.01


def test_isotonic_is_skipped_on_small_validation_sets():
    z, y = miscalibrated(400, seed=6)
    choice = choose_calibrator(z, y, CalibrationConfig(isotonic_min_samples=1000))
    assert "isotonic" not in choice.val_log_loss
    assert "400" in choice.skipped["isotonic"] and "1000" in choice.skipped["isotonic"]
    assert "skipped: isotonic" in choice.reason


def test_platt_with_inverted_slope_is_rejected():
    z, y = miscalibrated(2000, seed=7)
    choice = choose_calibrator(-z, y, CalibrationConfig(methods=["sigmoid"]))
    assert choice.calibrator.method == "none"
    assert "invert" in choice.skipped["sigmoid"]


def test_bad_input_is_one_clear_error():
    with pytest.raises(TierHpoError, match="NaN"):
        fit_calibrator(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 0]), "sigmoid")
    with pytest.raises(TierHpoError, match="both classes"):
        choose_calibrator(np.zeros(10), np.zeros(10))
    with pytest.raises(TierHpoError, match="unknown"):
        CalibrationConfig(methods=["beta"])
