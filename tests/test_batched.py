"""The batched trainer: a member trained inside a batch equals the same model trained alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import expit
from shrink import train_config

from training.batched import group_key, train_batch
from training.inference import predict_logits
from training.model import ModelConfig
from training.synthetic import synthetic_tier
from training.trainer import train


@pytest.fixture(scope="module")
def tier():
    return synthetic_tier(n_days=420, n_features=6, context_len=8, seed=3)


def members(data):
    model = ModelConfig(n_features=data.n_features, context_len=data.context_len, patch_len=2, d_model=16,
                        n_layers=2, n_heads=2, d_ff=32, dropout=0.1)
    base = train_config(lr=3e-3, batch_size=64, max_epochs=4, patience=2, progress=False, seed=7)  # tests/shrink.py
    hyper = [dict(), dict(seed=8, lr=1e-2, weight_decay=0.0), dict(seed=9, lr=1e-3, pos_weight=2.0),
             dict(seed=10, grad_clip=0.0, weight_decay=0.1, patience=1)]
    dropouts = [0.1, 0.0, 0.3, 0.2]
    return ([dataclasses.replace(model, dropout=d) for d in dropouts],
            [dataclasses.replace(base, **h) for h in hyper])


def test_member_equals_model_trained_alone(tier):
    models, trains = members(tier)
    assert len({group_key(m, t) for m, t in zip(models, trains, strict=True)}) == 1
    batched = train_batch(models, trains, tier)
    for m, t, b in zip(models, trains, batched, strict=True):
        alone = train(m, t, tier)
        assert (b.status, b.best_epoch, b.epochs_run) == (alone.status, alone.best_epoch, alone.epochs_run)
        assert abs(b.val_metrics["val/auc"] - alone.val_metrics["val/auc"]) <= 1e-6
        assert np.abs(b.val_pred - alone.val_pred).max() < 1e-4
        for h_b, h_a in zip(b.history, alone.history, strict=True):
            assert abs(h_b["val/auc"] - h_a["val/auc"]) <= 1e-6
            assert h_b["lr"] == pytest.approx(h_a["lr"], rel=1e-12)
        # The returned weights are the member's own network.
        assert np.abs(expit(predict_logits(m, b.state_dict, tier, "val", device="cpu")) - b.val_pred).max() < 1e-5
    # A member stopped early (and left the stack) while another went on.
    runs = [b.epochs_run for b in batched]
    assert any(b.status == "early_stopped" and b.epochs_run < max(runs) for b in batched)


def test_rerun_is_bit_identical_and_batch_size_invariant(tier):
    models, trains = members(tier)
    first, second = train_batch(models, trains, tier), train_batch(models, trains, tier)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.val_pred, b.val_pred) and a.val_metrics == b.val_metrics
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    (single,) = train_batch(models[2:3], trains[2:3], tier)
    assert abs(single.val_metrics["val/auc"] - first[2].val_metrics["val/auc"]) <= 1e-6


def test_callback_stops_only_its_member(tier):
    models, trains = members(tier)

    def prune(report):
        if report.epoch == 2:
            raise RuntimeError("pruned")

    results = train_batch(models[:2], trains[:2], tier, on_epoch=[prune, None])
    assert results[0].status == "stopped" and results[0].epochs_run == 2
    assert isinstance(results[0].extra["exception"], RuntimeError)
    assert results[1].epochs_run > 2


def test_refit_fresh_seeds_batched(tier, tmp_path):
    import json

    import pandas as pd

    from pipelines.hpo import refit_best, write_refit
    from training.seeds import fresh_seeds

    seeds = fresh_seeds(7, 3)
    assert len(set(seeds)) == 3 and 7 not in seeds and seeds == fresh_seeds(7, 3)
    models, trains = members(tier)
    best = {"model_config": models[0].to_dict(), "train_config": trains[0].to_dict(), "trial_number": 2}
    refit = refit_best(best, tier, seeds, ece_bins=15)
    write_refit(refit, tmp_path)
    summary = json.loads((tmp_path / "refit.json").read_text())
    assert summary["seeds"] == seeds and summary["study_seed"] == 7 and len(summary["members"]) == 3
    frame = pd.read_parquet(tmp_path / "val_predictions.parquet")
    assert list(frame.columns) == ["date", "y", *(f"seed_{s}" for s in seeds)]
    assert len(frame) == len(tier.split_ends["val"])
    states = torch.load(tmp_path / "refit.pt", weights_only=True)
    assert sorted(states) == sorted(f"seed_{s}" for s in seeds)
    # Each refit member is the same model as trained alone with that seed.
    alone = train(models[0], dataclasses.replace(trains[0], seed=seeds[1]), tier)
    assert abs(summary["members"][1]["val/auc"] - alone.val_metrics["val/auc"]) <= 1e-6



def test_attention_is_sliced_above_the_cuda_batch_limit(tier, monkeypatch):
    """Above MAX_ATTENTION_BATCH merged windows (K x B) attention runs in slices (CUDA's flash kernel
    refused 128 x 652 on an H200); training and validation give the same results as one call."""
    import training.batched as batched

    models, trains = members(tier)
    whole = train_batch(models[:2], trains[:2], tier)
    sizes = []
    sdpa = batched.F.scaled_dot_product_attention

    def spy(q, k, v):
        sizes.append(q.shape[0])
        return sdpa(q, k, v)

    monkeypatch.setattr(batched, "MAX_ATTENTION_BATCH", 50)
    monkeypatch.setattr(batched.F, "scaled_dot_product_attention", spy)
    sliced = train_batch(models[:2], trains[:2], tier)
    assert sizes and max(sizes) <= 50 and min(sizes) < 50
    for a, b in zip(whole, sliced, strict=True):
        assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
        assert abs(a.val_metrics["val/auc"] - b.val_metrics["val/auc"]) <= 1e-6
        assert np.abs(a.val_pred - b.val_pred).max() < 1e-5
