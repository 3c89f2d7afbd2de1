"""Baselines: same windows, splits and metrics as the transformer; CLI end to end on a real tier."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_ohlcv
from data_project import light_project, run_cli  # noqa: F401

from common import paths
from common.errors import TierHpoError
from evaluation.metrics import METRIC_NAMES, classification_metrics
from pipelines import ingest
from pipelines.baselines import MODELS, BaselinesConfig, fit_baselines
from training.synthetic import synthetic_tier


@pytest.fixture(scope="module")
def tier():
    return synthetic_tier(n_days=900, n_features=8, context_len=8, seed=1)


def test_fit_baselines_scores_val_and_test_with_every_metric(tier):
    metrics, predictions = fit_baselines(tier, BaselinesConfig(hgb_max_iter=30), ece_bins=10)
    expected = {f"{split}/{name}" for split in ("val", "test") for name in METRIC_NAMES}
    assert set(metrics) == set(MODELS)
    assert all(set(m) == expected for m in metrics.values())
    assert metrics["logreg"]["val/auc"] > 0.65  # the volatility signal is there to be found
    assert list(predictions.columns) == ["date", "split", "y", "vol", "logreg", "hgb"]
    for split in ("train", "val", "test"):
        rows = predictions[predictions["split"] == split]
        assert len(rows) == len(tier.split_ends[split])
        assert np.array_equal(rows["y"].to_numpy(), tier.labels_of(split))
        assert rows["date"].is_monotonic_increasing
    # The stored predictions are exactly what was scored.
    test = predictions[predictions["split"] == "test"]
    again = classification_metrics(test["y"], test["hgb"], "test", tier.base_rate, ece_bins=10)
    assert again == {k: v for k, v in metrics["hgb"].items() if k.startswith("test/")}


def test_fit_baselines_is_deterministic(tier):
    cfg = BaselinesConfig(hgb_max_iter=30)
    (m1, p1), (m2, p2) = fit_baselines(tier, cfg, 15), fit_baselines(tier, cfg, 15)
    assert m1 == m2
    pd.testing.assert_frame_equal(p1, p2)


def test_baselines_config_rejects_bad_values():
    with pytest.raises(TierHpoError, match="logreg_c"):
        BaselinesConfig(logreg_c=0.0)
    with pytest.raises(TierHpoError, match="hgb_max_leaf_nodes"):
        BaselinesConfig(hgb_max_leaf_nodes=1)


@pytest.fixture
def validated_tier(light_project, monkeypatch, capsys):  # noqa: F811
    """Tier a20 of make_ohlcv(800), built and validated by the real stages, plus our params sections."""
    raw = light_project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "SPY.csv").write_bytes(ingest.render_csv(ingest.canonical_ohlcv(make_ohlcv(800))))
    params = yaml.safe_load((light_project / "params.yaml").read_text())
    params["validate"]["data_docs"] = False
    params["metrics"] = {"ece_bins": 10, "pred_std_min": 0.01, "skill_min": 0.0}
    params["baselines"] = {"hgb_max_iter": 30, "seed": 0}
    (light_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("tiers", "validate"):
        code, _, err = run_cli(monkeypatch, capsys, stage, "--tier", "a20")
        assert code == 0, err
    return light_project


def test_cli_writes_metrics_and_predictions(validated_tier, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "baselines", "--tier", "a20", "--horizon", "1")
    assert code == 0, err
    assert "logreg val/auc" in out and "hgb" in out
    folder = paths.baselines_dir("a20", 1)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"vol", "logreg", "hgb"}
    assert {"val/auc", "test/auc", "val/ece", "test/log_loss_skill"} <= set(metrics["logreg"])
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert list(predictions.columns) == ["date", "split", "y", "vol", "logreg", "hgb"]
    assert set(predictions["split"]) == {"train", "val", "test"}
    assert predictions[["vol", "logreg", "hgb"]].apply(lambda c: c.between(0, 1).all()).all()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["h1"]  # no temp leftovers

    code, _, err = run_cli(monkeypatch, capsys, "baselines", "--tier", "a20", "--horizon", "1")
    assert code == 0, err
    assert json.loads((folder / "metrics.json").read_text()) == metrics  # deterministic re-run


def test_cli_bad_input_is_one_line_and_writes_nothing(validated_tier, monkeypatch, capsys):
    # (one test for every case: building and validating the tier is the expensive part)
    cases = [
        (("--tier", "a30", "--horizon", "1"), "unknown tier"),
        (("--tier", "a20", "--horizon", "4"), "not in data.horizons"),
        (("--tier", "a50", "--horizon", "1"), "tierhpo tiers --tier a50"),  # never built
    ]
    for args, message in cases:
        code, _, err = run_cli(monkeypatch, capsys, "baselines", *args)
        assert code == 2, args
        assert message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a50")  # built, not validated
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "baselines", "--tier", "a50", "--horizon", "1")
    assert code == 2 and "tierhpo validate --tier a50" in err
    assert not (validated_tier / "results" / "baselines").exists()
