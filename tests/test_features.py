"""Feature registry, hand-checked values, labels, and the no-look-ahead property."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_ohlcv
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import TierHpoError
from training.feature_docs import feature_table_markdown
from training.features import (
    FEATURE_NAMES,
    FEATURES,
    TIER_SIZES,
    WARMUP_ROWS,
    compute_features,
    tier_features,
)
from training.labels import make_labels

DOCS = Path(__file__).resolve().parents[1] / "docs" / "features.md"


def ohlcv(n: int = 400, seed: int = 0) -> pd.DataFrame:
    return make_ohlcv(n, seed=seed).rename(columns=str.lower)


@lru_cache(maxsize=8)
def full_features(n: int, seed: int) -> pd.DataFrame:
    return compute_features(ohlcv(n, seed))


# ---- registry -------------------------------------------------------------------------------


def test_tiers_are_nested_with_exact_sizes():
    assert len(FEATURES) == 100 and len(set(FEATURE_NAMES)) == 100
    a20, a50, a100 = (tier_features(t) for t in ("a20", "a50", "a100"))
    assert (len(a20), len(a50), len(a100)) == (20, 50, 100)
    assert a50[:20] == a20 and a100[:50] == a50
    assert not set(a100) & {"open", "high", "low", "close", "volume", "date"}
    assert TIER_SIZES == {"a20": 20, "a50": 50, "a100": 100}


def test_every_family_is_covered_by_a20():
    families = {f.family for f in FEATURES[:20]}
    assert families == {"returns", "realised vol", "range vol", "trend", "momentum", "volume", "calendar"}


def test_unknown_tier():
    with pytest.raises(TierHpoError, match="unknown tier 'a75'; choose one of a20, a50, a100"):
        tier_features("a75")


def test_declared_windows_are_the_real_lookbacks():
    feats = full_features(400, 0)
    assert list(feats.columns) == list(FEATURE_NAMES)
    assert (feats.dtypes == np.float64).all()
    for feat in FEATURES:
        col = feats[feat.name]
        assert col.first_valid_index() == feat.lookback - 1, feat.name
        assert np.isfinite(col.iloc[feat.lookback - 1 :]).all(), feat.name
    assert WARMUP_ROWS == max(f.lookback for f in FEATURES) - 1 == 252


def test_docs_table_is_in_sync_with_the_registry():
    assert DOCS.read_text() == feature_table_markdown(), "regenerate: python -m training.features > docs/features.md"


# ---- hand-checked values -------------------------------------------------------------------


def test_values_against_hand_computation():
    df = ohlcv(300, seed=1)
    f = compute_features(df)
    o, h, l, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))  # noqa: E741
    t = 280
    r = np.log(c[1:] / c[:-1])  # r[t-1] is the return of day t
    assert f["ret_1"][t] == pytest.approx(math.log(c[t] / c[t - 1]), rel=1e-12)
    assert f["ret_20"][t] == pytest.approx(math.log(c[t] / c[t - 20]), rel=1e-12)
    assert f["rv_20"][t] == pytest.approx(math.sqrt(252 * np.mean(r[t - 20 : t] ** 2)), rel=1e-9)
    hl2 = np.log(h[t - 4 : t + 1] / l[t - 4 : t + 1]) ** 2
    assert f["parkinson_5"][t] == pytest.approx(math.sqrt(252 * hl2.mean() / (4 * math.log(2))), rel=1e-9)
    gk = 0.5 * hl2 - (2 * math.log(2) - 1) * np.log(c[t - 4 : t + 1] / o[t - 4 : t + 1]) ** 2
    assert f["garman_klass_5"][t] == pytest.approx(math.sqrt(252 * max(gk.mean(), 0)), rel=1e-9)
    tr = np.maximum.reduce([h[t - 13 : t + 1] - l[t - 13 : t + 1],
                            np.abs(h[t - 13 : t + 1] - c[t - 14 : t]), np.abs(l[t - 13 : t + 1] - c[t - 14 : t])])
    assert f["atr_14"][t] == pytest.approx(tr.mean() / c[t], rel=1e-9)
    assert f["sma_ratio_20"][t] == pytest.approx(c[t] / c[t - 19 : t + 1].mean() - 1, rel=1e-9)
    assert f["up_hit_20"][t] == pytest.approx(np.mean(np.log(h[t - 19 : t + 1] / c[t - 20 : t]) >= math.log(1.01)))
    assert f["stoch_k_14"][t] == pytest.approx(
        (c[t] - l[t - 13 : t + 1].min()) / (h[t - 13 : t + 1].max() - l[t - 13 : t + 1].min()), rel=1e-12
    )
    assert f["volume_ratio_20"][t] == pytest.approx(math.log((v[t] + 1) / (v[t - 19 : t + 1].mean() + 1)), rel=1e-9)
    k = np.arange(20.0)
    slope = np.polyfit(k, np.log(c[t - 19 : t + 1]), 1)[0]
    assert f["slope_20"][t] == pytest.approx(slope, rel=1e-8)
    date = pd.Timestamp(df["date"][t])
    assert (f["day_of_week"][t], f["month"][t], f["day_of_month"][t]) == (date.day_of_week, date.month, date.day)


def test_rsi_and_flat_data_take_their_neutral_values():
    n = 300
    rising = pd.DataFrame({
        "date": pd.bdate_range("2001-01-01", periods=n),
        "open": np.linspace(100, 200, n), "high": np.linspace(100, 200, n) * 1.001,
        "low": np.linspace(100, 200, n) * 0.999, "close": np.linspace(100, 200, n), "volume": np.full(n, 1e6),
    })
    f = compute_features(rising)
    assert f["rsi_14"].iloc[-1] == 100.0  # no losses at all
    flat = rising.assign(open=100.0, high=100.0, low=100.0, close=100.0, volume=0.0)
    g = compute_features(flat).iloc[WARMUP_ROWS:]
    assert np.isfinite(g.to_numpy()).all()  # zero ranges/volumes give neutral values, never inf/NaN
    assert (g["close_location"] == 0.5).all() and (g["stoch_k_14"] == 0.5).all()
    assert (g["rsi_14"] == 50.0).all() and (g["rv_ratio_5_20"] == 1.0).all() and (g["rv_20"] == 0).all()


# ---- labels ---------------------------------------------------------------------------------


def test_labels_by_hand():
    close = pd.Series([100.0, 100.0, 100.0, 100.0, 100.0])
    high = pd.Series([100.0, 100.5, 101.0, 100.0, 102.0])
    labels = make_labels(high, close, [1, 2], threshold=0.01)
    # h=1: High[t+1] >= 101 -> t=1 (101.0), t=3 (102.0); last row has no future
    assert labels["target_h1"].tolist()[:4] == [0.0, 1.0, 0.0, 1.0] and math.isnan(labels["target_h1"].iloc[4])
    # h=2: max(High[t+1..t+2]) >= 101 -> t=0 (101.0 at t+2), t=1, t=2 (102.0 at t+2); two rows lack a future
    assert labels["target_h2"].tolist()[:3] == [1.0, 1.0, 1.0] and labels["target_h2"].iloc[3:].isna().all()


def test_labels_look_only_forward_and_never_at_day_t():
    close = pd.Series([100.0, 100.0, 100.0])
    high = pd.Series([200.0, 100.0, 100.0])  # day 0's own high must not count for day 0
    assert make_labels(high, close, [1], 0.01)["target_h1"].tolist()[:2] == [0.0, 0.0]


# ---- no look-ahead --------------------------------------------------------------------------


def assert_causal(fn, df: pd.DataFrame, t: int) -> None:
    """fn on df truncated after day t must equal fn on the whole df, for every day <= t."""
    full = fn(df)
    part = fn(df.iloc[: t + 1])
    pd.testing.assert_frame_equal(part, full.iloc[: t + 1], check_exact=True)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 3), t=st.integers(0, 399))
def test_no_look_ahead_at_sampled_days(seed, t):
    df = ohlcv(400, seed)
    part = compute_features(df.iloc[: t + 1])
    pd.testing.assert_frame_equal(part, full_features(400, seed).iloc[: t + 1], check_exact=True)


def test_no_look_ahead_around_the_warm_up_edge():
    df = ohlcv(400, 0)
    for t in (WARMUP_ROWS - 1, WARMUP_ROWS, WARMUP_ROWS + 1, 399):
        assert_causal(compute_features, df, t)


def test_the_property_catches_a_leaky_feature():
    def leaky(frame: pd.DataFrame) -> pd.DataFrame:
        out = compute_features(frame)
        out["ret_1"] = out["ret_1"].shift(-1)  # tomorrow's return: look-ahead
        return out

    with pytest.raises(AssertionError):
        assert_causal(leaky, ohlcv(400, 0), 300)
