"""Tier datasets: purged chronological splits, the split sidecar, nested tiers, load_tier."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_ohlcv
from data_project import TINY_DATA, light_project, run_cli, tiny_data, write_params  # noqa: F401

from common import config, paths
from common.errors import TierHpoError
from pipelines import ingest
from pipelines.tiers import TiersConfig, build_tier
from training.dataset import DataConfig, load_tier
from training.features import WARMUP_ROWS, tier_features
from training.splits import check_bounds, minimum_rows, split_bounds

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


# ---- split arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [200, 543, 1000, 4774])
def test_split_bounds_are_chronological_with_exact_gaps(n):
    gap = 37
    b = split_bounds(n, FRACTIONS, gap)
    assert b["train"][0] == 0 and b["test"][1] == n
    assert b["val"][0] - b["train"][1] == gap and b["test"][0] - b["val"][1] == gap
    sizes = {s: hi - lo for s, (lo, hi) in b.items()}
    usable = n - 2 * gap
    assert sum(sizes.values()) == usable
    for s, frac in FRACTIONS.items():
        assert abs(sizes[s] - frac * usable) <= 2


def test_minimum_rows_is_tight():
    n = minimum_rows(FRACTIONS, gap=13, context_len=8, min_windows=20)
    check_bounds(split_bounds(n, FRACTIONS, 13), 8, 20)
    with pytest.raises(TierHpoError, match=r"too few rows for the splits: .* < data.min_windows_per_split=20"):
        check_bounds(split_bounds(n - 1, FRACTIONS, 13), 8, 20)


# ---- building a tier ----------------------------------------------------------------------


@pytest.fixture
def built(light_project):  # noqa: F811
    """The raw make_ohlcv(800) in data/raw and all three tiers built through the CLI code path."""
    raw = light_project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "SPY.csv").write_bytes(ingest.render_csv(ingest.canonical_ohlcv(make_ohlcv(800))))
    return light_project


def _build_all(monkeypatch, capsys):
    for tier in ("a20", "a50", "a100"):
        code, out, err = run_cli(monkeypatch, capsys, "tiers", "--tier", tier)
        assert code == 0, err
        assert "positive rate train/val/test" in out


def test_tier_files_columns_dtypes_and_rows(built, monkeypatch, capsys):
    _build_all(monkeypatch, capsys)
    raw = ingest.read_raw("SPY")
    frame = pd.read_parquet(paths.tier_path("SPY", "a50"))
    labels = [f"target_h{h}" for h in TINY_DATA["horizons"]]
    assert list(frame.columns) == ["date", "open", "high", "low", "close", "volume", "log_oc", "log_hc", "log_lc",
                                   "log_ret", "log_vol_rel", *tier_features("a50"), *labels]
    assert frame.shape[1] - 1 - len(labels) == 60  # 5 raw base + 5 stationary + 50 engineered columns
    assert (frame.drop(columns=["date", *labels]).dtypes == np.float64).all()
    assert (frame[labels].dtypes == np.int8).all() and frame[labels].isin([0, 1]).all(axis=None)
    assert not frame.isna().any(axis=None)
    # warm-up rows dropped at the start, unlabelled rows (max horizon) at the end
    assert frame["date"].iloc[0] == raw["date"].iloc[WARMUP_ROWS]
    assert frame["date"].iloc[-1] == raw["date"].iloc[-1 - max(TINY_DATA["horizons"])]
    assert len(frame) == 800 - WARMUP_ROWS - max(TINY_DATA["horizons"])


def test_tiers_are_nested_and_share_rows(built, monkeypatch, capsys):
    _build_all(monkeypatch, capsys)
    frames = {t: pd.read_parquet(paths.tier_path("SPY", t)) for t in ("a20", "a50", "a100")}
    for small, big in (("a20", "a50"), ("a50", "a100")):
        assert set(frames[small].columns) < set(frames[big].columns)
        pd.testing.assert_frame_equal(frames[small], frames[big][frames[small].columns])
    metas = [json.loads(paths.splits_path("SPY", t).read_text())["splits"] for t in frames]
    assert metas[0] == metas[1] == metas[2]


def test_split_sidecar_and_parquet_metadata(built, monkeypatch, capsys):
    _build_all(monkeypatch, capsys)
    meta = json.loads(paths.splits_path("SPY", "a20").read_text())
    embedded = json.loads(pq.read_schema(paths.tier_path("SPY", "a20")).metadata[b"tierhpo"])
    assert embedded == meta
    frame = pd.read_parquet(paths.tier_path("SPY", "a20"))
    gap = max(TINY_DATA["horizons"]) + TINY_DATA["context_len"]
    assert meta["gap"] == gap and meta["n_rows"] == len(frame)
    for h in TINY_DATA["horizons"]:
        s = meta["splits"][f"h{h}"]
        assert s["val"]["start"] - s["train"]["stop"] == gap and s["test"]["start"] - s["val"]["stop"] == gap
        for split, b in s.items():
            assert b["first_date"] == frame["date"].iloc[b["start"]].strftime("%Y-%m-%d")
            assert b["last_date"] == frame["date"].iloc[b["stop"] - 1].strftime("%Y-%m-%d")
            assert b["windows"] == b["rows"] - TINY_DATA["context_len"] + 1 >= TINY_DATA["min_windows_per_split"]
            ends = frame[f"target_h{h}"].iloc[b["start"] + TINY_DATA["context_len"] - 1 : b["stop"]]
            assert b["positive_rate"] == pytest.approx(ends.mean(), abs=1e-6), split


@pytest.mark.parametrize("horizon", TINY_DATA["horizons"])
def test_no_window_or_label_crosses_a_split_boundary(built, monkeypatch, capsys, horizon):
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a20")
    assert code == 0, err
    data = load_tier("SPY", "a20", horizon)
    L = data.context_len
    windows = {s: data.window_index(s) for s in ("train", "val", "test")}
    for earlier, later in (("train", "val"), ("val", "test")):
        last_label_day = windows[earlier][-1, -1] + horizon  # the future High the last label looks at
        first_input_day = windows[later][0, 0]
        assert last_label_day < first_input_day
        assert first_input_day - windows[earlier][-1, -1] > horizon + L - 1
    all_days = np.concatenate([w.ravel() for w in windows.values()])
    assert all_days.min() >= 0 and all_days.max() < len(data.labels)  # every row has all its labels


def test_load_tier_standardises_with_train_statistics_only(built, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a50")
    assert code == 0, err
    data = load_tier("SPY", "a50", 1)
    assert data.n_features == 55 and data.feature_names[:5] == ("log_oc", "log_hc", "log_lc", "log_ret", "log_vol_rel")
    assert not {"open", "high", "low", "close", "volume"} & set(data.feature_names)  # raw levels never reach a model
    meta = json.loads(paths.splits_path("SPY", "a50").read_text())
    lo, hi = meta["splits"]["h1"]["train"]["start"], meta["splits"]["h1"]["train"]["stop"]
    train = data.features[lo:hi].astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)
    varying = data.std != 1.0
    np.testing.assert_allclose(train.std(axis=0)[varying], 1, atol=1e-4)
    raw = pd.read_parquet(paths.tier_path("SPY", "a50"))
    np.testing.assert_allclose(data.mean, raw[list(data.feature_names)].iloc[lo:hi].mean().to_numpy())
    assert {s: len(e) for s, e in data.split_ends.items()} == {
        s: meta["splits"]["h1"][s]["windows"] for s in ("train", "val", "test")
    }
    assert load_tier("SPY", "a50", 1, include_base=False).n_features == 50


def test_load_tier_refuses_what_the_splits_cannot_support(built, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a20")
    assert code == 0, err
    with pytest.raises(TierHpoError, match="horizon 4 is not in SPY_a20"):
        load_tier("SPY", "a20", 4)
    with pytest.raises(TierHpoError, match=r"context_len 9 \+ horizon 5 exceeds the purge gap 13"):
        load_tier("SPY", "a20", 5, context_len=9)
    with pytest.raises(TierHpoError, match="SPY_a20 has not passed validation"):
        load_tier("SPY", "a20", 1, require_validated=True)
    with pytest.raises(TierHpoError, match=r"no split file .*SPY_a50.splits.json; build the tier first"):
        load_tier("SPY", "a50", 1)


def test_too_short_for_the_splits_keeps_earlier_outputs(built, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a20")
    assert code == 0, err
    before = paths.tier_path("SPY", "a20").read_bytes(), paths.splits_path("SPY", "a20").read_bytes()
    write_params(built, tiny_data(min_windows_per_split=200))
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a20")
    assert code == 2 and "too few rows for the splits" in err and len(err.strip().splitlines()) == 1
    assert (paths.tier_path("SPY", "a20").read_bytes(), paths.splits_path("SPY", "a20").read_bytes()) == before
    assert sorted(p.name for p in paths.tiers_dir().iterdir()) == ["SPY_a20.parquet", "SPY_a20.splits.json"]


def test_adjusted_prices_scale_ohlc_by_adj_close():
    raw = ingest.canonical_ohlcv(make_ohlcv(800).assign(**{"Adj Close": lambda f: f["Close"] * 0.5}))
    cfg = config.build(DataConfig, TINY_DATA, where="data")
    adj, _ = build_tier(raw, "a20", cfg, TiersConfig(use_adjusted=True), "SPY")
    plain, _ = build_tier(raw.drop(columns=["adj_close"]), "a20", cfg, TiersConfig(), "SPY")
    np.testing.assert_allclose(adj["close"], plain["close"] * 0.5)
    np.testing.assert_allclose(adj["ret_5"], plain["ret_5"])  # a constant factor leaves returns alone
    assert (adj["target_h1"] == plain["target_h1"]).all()


def test_corrupt_tier_files_are_one_line_errors(built, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a20")
    assert code == 0, err
    paths.tier_path("SPY", "a20").write_bytes(b"not a parquet file")
    with pytest.raises(TierHpoError, match=r"cannot read .*SPY_a20.parquet .*; rebuild it with `tierhpo tiers`"):
        load_tier("SPY", "a20", 1)
    paths.splits_path("SPY", "a20").write_text("{")
    with pytest.raises(TierHpoError, match=r"SPY_a20.splits.json is not a valid split file; rebuild it"):
        load_tier("SPY", "a20", 1)
