"""The trainer: smoke run, determinism, early stopping, NaN handling, callbacks, split hygiene."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from scipy.special import expit
from shrink import train_config as shrunk_train_config

from common.errors import TierHpoError
from evaluation.metrics import EPOCH_METRIC_NAMES, METRIC_NAMES
from training.budget import count_params
from training.inference import predict_logits
from training.model import ModelConfig
from training.synthetic import synthetic_tier
from training.trainer import EpochReport, TrainConfig, train


@pytest.fixture(scope="module")
def tier():
    return synthetic_tier(n_days=420, n_features=6, context_len=8, seed=3)


def model_config(data, **overrides) -> ModelConfig:
    base = dict(n_features=data.n_features, context_len=data.context_len, patch_len=2, d_model=16,
                n_layers=1, n_heads=2, d_ff=32, dropout=0.1)
    return ModelConfig(**{**base, **overrides})


def train_config(**overrides) -> TrainConfig:
    """The shrunk train section (tests/shrink.py) at this module's sizes."""
    return shrunk_train_config(**{"lr": 3e-3, "batch_size": 64, "max_epochs": 2, "patience": 2, "progress": False,
                                  "seed": 7, **overrides})


def test_one_epoch_smoke(tier):
    cfg = model_config(tier)
    threads = torch.get_num_threads()
    result = train(cfg, train_config(max_epochs=1), tier)
    assert torch.get_num_threads() == threads  # the caller owns the thread count
    assert (result.status, result.best_epoch, result.epochs_run) == ("completed", 1, 1)
    assert result.ok and result.device == "cpu" and result.train_seconds > 0
    assert set(result.val_metrics) == {f"val/{name}" for name in METRIC_NAMES}
    assert 0.0 <= result.val_metrics["val/auc"] <= 1.0
    assert result.n_params == count_params(cfg)
    assert result.val_pred.shape == (len(tier.split_ends["val"]),)
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    (step,) = result.history
    assert set(step) == {"epoch", "train/loss", "lr", "epoch_seconds", *(f"val/{n}" for n in EPOCH_METRIC_NAMES)}
    assert all(step[k] == result.val_metrics[k] for k in step if k.startswith("val/"))
    # The returned weights reproduce the returned validation predictions.
    assert np.array_equal(expit(predict_logits(cfg, result.state_dict, tier, "val", device="cpu")), result.val_pred)


def test_learns_the_volatility_signal(tier):
    result = train(model_config(tier), train_config(max_epochs=6, patience=6, lr=1e-2), tier)
    assert result.val_metrics["val/auc"] > 0.6


def test_same_seed_gives_bit_identical_results(tier):
    cfg, tcfg = model_config(tier), train_config()
    first, second = train(cfg, tcfg, tier), train(cfg, tcfg, tier)
    assert first.history == [dict(h, epoch_seconds=first.history[i]["epoch_seconds"])
                             for i, h in enumerate(second.history)]
    assert first.val_metrics == second.val_metrics
    assert np.array_equal(first.val_pred, second.val_pred)
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    other = train(cfg, dataclasses.replace(tcfg, seed=8), tier)
    assert not np.array_equal(first.val_pred, other.val_pred)


def test_early_stopping_on_val_auc(tier):
    # No epoch can beat the first by 0.5 AUC: stop after `patience` epochs without a gain.
    result = train(model_config(tier), train_config(max_epochs=10, patience=2, min_delta=0.5), tier)
    assert result.status == "early_stopped"
    assert (result.best_epoch, result.epochs_run, len(result.history)) == (1, 3, 3)
    assert "val/auc" in result.reason
    assert all(result.val_metrics[k] == v for k, v in result.history[0].items() if k.startswith("val/"))


def test_nan_loss_ends_cleanly_with_a_reason(tier):
    features = tier.features.copy()
    features[tier.split_ends["train"][:5]] = np.nan  # poisons some training windows
    broken = dataclasses.replace(tier, features=features)
    result = train(model_config(tier), train_config(max_epochs=3), broken)
    assert result.status == "nan_loss" and not result.ok
    assert "non-finite" in result.reason and "epoch 1" in result.reason
    assert result.epochs_run == 1 and result.best_epoch == 0
    assert result.state_dict is None and result.val_metrics == {} and result.history == []


def test_on_epoch_sees_every_epoch_and_its_exceptions_propagate(tier):
    class Pruned(Exception):
        pass

    seen: list[EpochReport] = []

    def on_epoch(report: EpochReport) -> None:
        seen.append(report)
        if report.epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train(model_config(tier), train_config(max_epochs=5, patience=5), tier, on_epoch=on_epoch)
    assert [r.epoch for r in seen] == [1, 2]
    assert all(set(r.metrics) == {f"val/{n}" for n in EPOCH_METRIC_NAMES} for r in seen)
    assert seen[1].best_auc == max(r.metrics["val/auc"] for r in seen)
    assert seen[0].as_dict()["train/loss"] == seen[0].train_loss


def test_never_reads_the_test_split(tier):
    features, labels = tier.features.copy(), tier.labels.copy()
    test_rows = tier.window_index("test").ravel()
    features[test_rows], labels[test_rows] = np.nan, np.nan
    blind = dataclasses.replace(tier, features=features, labels=labels)
    cfg, tcfg = model_config(tier), train_config()
    clean, poisoned = train(cfg, tcfg, tier), train(cfg, tcfg, blind)
    assert poisoned.ok
    assert clean.val_metrics == poisoned.val_metrics


def test_pos_weight_changes_training(tier):
    cfg = model_config(tier)
    plain = train(cfg, train_config(max_epochs=1), tier)
    weighted = train(cfg, train_config(max_epochs=1, pos_weight=3.0), tier)
    assert weighted.history[0]["train/loss"] != plain.history[0]["train/loss"]
    assert weighted.val_metrics["val/pred_mean"] > plain.val_metrics["val/pred_mean"]


def test_predictions_for_any_split(tier):
    cfg = model_config(tier)
    result = train(cfg, train_config(max_epochs=1), tier)
    logits = predict_logits(cfg, result.state_dict, tier, "test", batch_size=7, device="cpu")
    assert logits.shape == (len(tier.split_ends["test"]),)
    assert logits.dtype == np.float64
    assert np.isfinite(logits).all()


def test_state_dict_loads_with_weights_only(tier):
    cfg = model_config(tier)
    result = train(cfg, train_config(max_epochs=1), tier)
    buffer = io.BytesIO()
    torch.save(result.state_dict, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert np.array_equal(expit(predict_logits(cfg, state, tier, "val")), result.val_pred)


def test_progress_bars_are_quiet_off_a_terminal(tier, capsys):
    train(model_config(tier), train_config(max_epochs=1, progress=True), tier)
    train(model_config(tier), train_config(max_epochs=1, progress=False), tier)
    assert capsys.readouterr().err == ""


def test_mismatched_model_is_refused(tier):
    with pytest.raises(TierHpoError, match="re-solve"):
        train(model_config(tier, n_features=tier.n_features + 1), train_config(), tier)


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", 0.0), ("batch_size", 0), ("patience", 0), ("warmup_frac", 1.0), ("pos_weight", -1.0),
     ("device", "tpu")],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(TierHpoError, match=field):
        train_config(**{field: value})


def test_train_config_round_trips_through_a_dict():
    cfg = train_config(pos_weight=2.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
