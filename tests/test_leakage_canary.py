"""Leakage canary (issue 12): labels permuted within each split carry no information, so a model fitted
on them scores chance on test, unless the fit sees test rows (training on windows beyond the purge
gap, statistics fitted on more than the training split, early stopping on test).

On the real bundled S&P 500 and the default a50 tier, built by the real stages (ingest, tiers,
validate): labels are permuted within train, within val and within test (the same permutation the
model is then scored against). The test labels have to be permuted too: with only the training
labels permuted, a model still *ranks* test days by its inputs, and a ranking by volatility alone
has test AUC 0.82 or 0.18 whatever the fit learnt (measured: a one-feature model gave 0.176, an
untrained-looking 1-epoch network 0.648), which says nothing about leakage. A model that saw the
permuted test labels in training would rank them; one that did not scores 0.5 +- SE (about 0.034
at ~680 test days and a 12 % base rate). Averaged over ``K`` permutations, within 0.5 +- 0.05.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import build_validated_tier, copy_repo

pytestmark = pytest.mark.slow

K_BASELINES, K_TRANSFORMER = 5, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("canary") / "repo")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "TIERHPO_ROOT": str(repo), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    build_validated_tier(repo, "a50", env)
    os.environ["TIERHPO_ROOT"] = str(repo)
    try:
        from training.dataset import load_tier

        return load_tier("SPY", "a50", 1, require_validated=True)
    finally:
        os.environ.pop("TIERHPO_ROOT", None)


def permuted(data, seed: int):
    """``data`` with its labels permuted within each split's windows (rows outside windows unchanged)."""
    rng = np.random.default_rng(seed)
    labels = data.labels.copy()
    for rows in data.split_ends.values():
        labels[rows] = rng.permutation(labels[rows])
    return dataclasses.replace(data, labels=labels)


def test_baselines_fitted_on_permuted_labels_score_chance_on_test(data):
    from evaluation.auc import rank_auc
    from pipelines.baselines import BaselinesConfig, fit_baselines

    aucs = {"vol": [], "logreg": [], "hgb": []}
    for seed in range(K_BASELINES):
        _, predictions = fit_baselines(permuted(data, seed), BaselinesConfig(), ece_bins=15)
        test = predictions[predictions["split"] == "test"]
        for name in aucs:
            aucs[name].append(float(rank_auc(test["y"].to_numpy(), test[name].to_numpy())))
    for name, values in aucs.items():
        assert abs(np.mean(values) - 0.5) <= 0.05, (name, values)


def test_a_one_epoch_transformer_on_permuted_labels_scores_chance_on_test(data):
    from scipy.special import expit

    from evaluation.auc import rank_auc
    from training.budget import ModelParams
    from training.inference import predict_logits
    from training.trainer import TrainConfig, train

    model_cfg = ModelParams().solve("20K", data.n_features, data.context_len)
    aucs = []
    for seed in range(K_TRANSFORMER):
        shuffled = permuted(data, 100 + seed)
        result = train(model_cfg, TrainConfig(max_epochs=1, patience=1, progress=False, seed=seed), shuffled)
        p = expit(predict_logits(model_cfg, result.state_dict, shuffled, "test"))
        aucs.append(float(rank_auc(shuffled.labels_of("test"), p)))
    assert abs(np.mean(aucs) - 0.5) <= 0.05, aucs
