"""Engineered features of the tiers a20 ⊂ a50 ⊂ a100, strictly causal and vectorised.

``FEATURES`` is the registry, in tier order: the first 20 entries are tier a20, the first 50
are a50, all 100 are a100. Each entry carries its formula and its *lookback*: the number of
rows, day t included, that the feature needs before it has a value (tests check that the
first non-null row of every feature is exactly ``lookback - 1``). ``docs/features.md`` is
generated from the registry (``python -m training.features``, see ``training.feature_docs``).

Causality: every value at day t uses rows 0..t only: trailing rolling windows, ``diff`` and
``shift`` with positive lags, and recursive EWMs (``adjust=False``), which depend only on the
past. The property test in tests/test_features.py checks this by truncation.

Notation: O, H, L, C, V are open, high, low, close, volume; r_t = ln(C_t / C_{t-1});
mean_w / std_w / max_w / min_w are trailing windows of w rows ending at day t (std with
ddof=1); EWM_a is the recursive exponential average with smoothing a. Those window statistics
live in ``training.window_stats``; this module is the registry and the formulas built on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.errors import TierHpoError, shorten
from training.window_stats import (
    ANNUAL,
    annualised_rms,
    ewm_mean,
    rolling_mean,
    rolling_mean_abs_dev,
    rolling_moment,
    rolling_slope,
    rolling_std,
    safe_div,
    stochastic_k,
    wilder_rsi,
)

BASE_COLUMNS = ("open", "high", "low", "close", "volume")
TIER_SIZES = {"a20": 20, "a50": 50, "a100": 100}
KNOWN_TIERS = tuple(TIER_SIZES)
UP_MOVE = math.log(1.01)  # fixed 1 % up-move for the up_hit features (independent of data.threshold)


@dataclass(frozen=True)
class Feature:
    name: str
    family: str
    formula: str
    lookback: int  # rows needed, day t included, before the first value


def _f(name: str, family: str, formula: str, lookback: int) -> Feature:
    return Feature(name, family, formula, lookback)


FEATURES: tuple[Feature, ...] = (
    # ---- a20: the core of every family -------------------------------------------------
    _f("ret_1", "returns", "ln(C_t / C_{t-1})", 2),
    _f("ret_5", "returns", "ln(C_t / C_{t-5})", 6),
    _f("ret_20", "returns", "ln(C_t / C_{t-20})", 21),
    _f("rv_5", "realised vol", "sqrt(252 · mean_5(r²))", 6),
    _f("rv_20", "realised vol", "sqrt(252 · mean_20(r²))", 21),
    _f("rv_60", "realised vol", "sqrt(252 · mean_60(r²))", 61),
    _f("parkinson_5", "range vol", "sqrt(252 / (4 ln 2) · mean_5(ln(H/L)²))", 5),
    _f("parkinson_20", "range vol", "sqrt(252 / (4 ln 2) · mean_20(ln(H/L)²))", 20),
    _f("garman_klass_5", "range vol", "sqrt(252 · max(0, mean_5(½ ln(H/L)² − (2 ln 2 − 1) ln(C/O)²)))", 5),
    _f("garman_klass_20", "range vol", "sqrt(252 · max(0, mean_20(½ ln(H/L)² − (2 ln 2 − 1) ln(C/O)²)))", 20),
    _f("hl_range", "range vol", "ln(H_t / L_t)", 1),
    _f("up_excursion", "range vol", "ln(H_t / C_{t-1})", 2),
    _f("up_hit_20", "range vol", "mean_20(1[ln(H_t / C_{t-1}) ≥ ln 1.01])", 21),
    _f("atr_14", "range vol", "mean_14(TR) / C_t, TR = max(H−L, |H−C_{t-1}|, |L−C_{t-1}|)", 15),
    _f("sma_ratio_20", "trend", "C_t / mean_20(C) − 1", 20),
    _f("sma_ratio_50", "trend", "C_t / mean_50(C) − 1", 50),
    _f("sma_ratio_200", "trend", "C_t / mean_200(C) − 1", 200),
    _f("rsi_14", "momentum", "Wilder RSI: 100 − 100 / (1 + EWM_{1/14}(gain) / EWM_{1/14}(loss))", 15),
    _f("volume_ratio_20", "volume", "ln((V_t + 1) / (mean_20(V) + 1))", 20),
    _f("day_of_week", "calendar", "weekday of the date, Monday = 0", 1),
    # ---- a50: +30 -----------------------------------------------------------------------
    _f("ret_2", "returns", "ln(C_t / C_{t-2})", 3),
    _f("ret_3", "returns", "ln(C_t / C_{t-3})", 4),
    _f("ret_10", "returns", "ln(C_t / C_{t-10})", 11),
    _f("ret_60", "returns", "ln(C_t / C_{t-60})", 61),
    _f("rv_10", "realised vol", "sqrt(252 · mean_10(r²))", 11),
    _f("rv_120", "realised vol", "sqrt(252 · mean_120(r²))", 121),
    _f("parkinson_10", "range vol", "sqrt(252 / (4 ln 2) · mean_10(ln(H/L)²))", 10),
    _f("parkinson_60", "range vol", "sqrt(252 / (4 ln 2) · mean_60(ln(H/L)²))", 60),
    _f("garman_klass_10", "range vol", "as garman_klass_5 over 10 days", 10),
    _f("garman_klass_60", "range vol", "as garman_klass_5 over 60 days", 60),
    _f("rogers_satchell_20", "range vol", "sqrt(252 · max(0, mean_20(ln(H/C) ln(H/O) + ln(L/C) ln(L/O))))", 20),
    _f("yang_zhang_20", "range vol",
       "sqrt(252 · (var_20(ln(O_t/C_{t-1})) + k var_20(ln(C/O)) + (1−k) RS_20)), k = 0.34 / (1.34 + 21/19)", 21),
    _f("gap_ret", "returns", "ln(O_t / C_{t-1})", 2),
    _f("oc_ret", "returns", "ln(C_t / O_t)", 1),
    _f("close_location", "range vol", "(C − L) / (H − L), 0.5 when H = L", 1),
    _f("up_excursion_mean_5", "range vol", "mean_5(ln(H_t / C_{t-1}))", 6),
    _f("rv_ratio_5_20", "realised vol", "rv_5 / rv_20 (1 when rv_20 = 0)", 21),
    _f("rv_ratio_20_120", "realised vol", "rv_20 / rv_120 (1 when rv_120 = 0)", 121),
    _f("sma_ratio_10", "trend", "C_t / mean_10(C) − 1", 10),
    _f("sma_ratio_100", "trend", "C_t / mean_100(C) − 1", 100),
    _f("sma_cross_20_50", "trend", "mean_20(C) / mean_50(C) − 1", 50),
    _f("sma_cross_50_200", "trend", "mean_50(C) / mean_200(C) − 1", 200),
    _f("dist_high_20", "trend", "ln(C_t / max_20(H))", 20),
    _f("dist_low_20", "trend", "ln(C_t / min_20(L))", 20),
    _f("macd", "momentum", "(EWM_{2/13}(C) − EWM_{2/27}(C)) / C_t", 26),
    _f("macd_signal", "momentum", "EWM_{2/10}(macd)", 34),
    _f("stoch_k_14", "momentum", "(C_t − min_14(L)) / (max_14(H) − min_14(L)), 0.5 when flat", 14),
    _f("bollinger_b_20", "momentum", "(C_t − mean_20(C) + 2 std_20(C)) / (4 std_20(C)), 0.5 when flat", 20),
    _f("volume_ratio_5", "volume", "ln((V_t + 1) / (mean_5(V) + 1))", 5),
    _f("month", "calendar", "month of the date, 1..12", 1),
    # ---- a100: +50 ----------------------------------------------------------------------
    _f("ret_120", "returns", "ln(C_t / C_{t-120})", 121),
    _f("ret_252", "returns", "ln(C_t / C_{t-252})", 253),
    _f("rv_252", "realised vol", "sqrt(252 · mean_252(r²))", 253),
    _f("downside_vol_20", "realised vol", "sqrt(252 · mean_20(min(r, 0)²))", 21),
    _f("upside_vol_20", "realised vol", "sqrt(252 · mean_20(max(r, 0)²))", 21),
    _f("vol_of_vol_60", "realised vol", "std_60(rv_20) / mean_60(rv_20) (0 when the mean is 0)", 80),
    _f("rv_ratio_20_252", "realised vol", "rv_20 / rv_252 (1 when rv_252 = 0)", 253),
    _f("parkinson_120", "range vol", "sqrt(252 / (4 ln 2) · mean_120(ln(H/L)²))", 120),
    _f("garman_klass_120", "range vol", "as garman_klass_5 over 120 days", 120),
    _f("rogers_satchell_5", "range vol", "as rogers_satchell_20 over 5 days", 5),
    _f("rogers_satchell_60", "range vol", "as rogers_satchell_20 over 60 days", 60),
    _f("yang_zhang_60", "range vol", "as yang_zhang_20 over 60 days, k = 0.34 / (1.34 + 61/59)", 61),
    _f("hl_range_mean_5", "range vol", "mean_5(ln(H/L))", 5),
    _f("hl_range_mean_20", "range vol", "mean_20(ln(H/L))", 20),
    _f("atr_5", "range vol", "mean_5(TR) / C_t", 6),
    _f("up_excursion_max_5", "range vol", "max_5(ln(H_t / C_{t-1}))", 6),
    _f("up_excursion_mean_20", "range vol", "mean_20(ln(H_t / C_{t-1}))", 21),
    _f("up_hit_60", "range vol", "mean_60(1[ln(H_t / C_{t-1}) ≥ ln 1.01])", 61),
    _f("down_excursion", "range vol", "ln(L_t / C_{t-1})", 2),
    _f("upper_shadow", "range vol", "ln(H_t / max(O_t, C_t))", 1),
    _f("lower_shadow", "range vol", "ln(min(O_t, C_t) / L_t)", 1),
    _f("skew_20", "returns", "sample skewness of r over 20 days, 0 when flat", 21),
    _f("kurt_20", "returns", "sample excess kurtosis of r over 20 days, 0 when flat", 21),
    _f("skew_60", "returns", "sample skewness of r over 60 days, 0 when flat", 61),
    _f("max_ret_20", "returns", "max_20(r)", 21),
    _f("min_ret_20", "returns", "min_20(r)", 21),
    _f("autocorr_60", "returns", "corr_60(r_t, r_{t-1}), 0 when flat", 62),
    _f("sma_ratio_5", "trend", "C_t / mean_5(C) − 1", 5),
    _f("ema_ratio_12", "trend", "C_t / EWM_{2/13}(C) − 1", 12),
    _f("ema_ratio_26", "trend", "C_t / EWM_{2/27}(C) − 1", 26),
    _f("slope_20", "trend", "OLS slope of ln C on the day index over 20 days (per day)", 20),
    _f("slope_60", "trend", "OLS slope of ln C on the day index over 60 days (per day)", 60),
    _f("dist_high_252", "trend", "ln(C_t / max_252(H))", 252),
    _f("dist_low_252", "trend", "ln(C_t / min_252(L))", 252),
    _f("bollinger_width_20", "trend", "4 std_20(C) / mean_20(C)", 20),
    _f("macd_hist", "momentum", "macd − macd_signal", 34),
    _f("rsi_7", "momentum", "Wilder RSI with EWM_{1/7}", 8),
    _f("rsi_28", "momentum", "Wilder RSI with EWM_{1/28}", 29),
    _f("stoch_k_5", "momentum", "(C_t − min_5(L)) / (max_5(H) − min_5(L)), 0.5 when flat", 5),
    _f("stoch_d_14", "momentum", "mean_3(stoch_k_14)", 16),
    _f("cci_20", "momentum", "(TP − mean_20(TP)) / (0.015 · meanabsdev_20(TP)), TP = (H+L+C)/3; 0 when flat", 20),
    _f("adx_14", "momentum", "Wilder ADX: EWM_{1/14}(100 |+DI − −DI| / (+DI + −DI))", 28),
    _f("di_spread_14", "momentum", "(+DI − −DI) / (+DI + −DI), DI from EWM_{1/14} of ±DM and TR; 0 when flat", 15),
    _f("mfi_14", "volume", "100 · Σ_14 positive money flow / Σ_14 money flow, MF = TP · V; 50 when flat", 15),
    _f("volume_ratio_60", "volume", "ln((V_t + 1) / (mean_60(V) + 1))", 60),
    _f("volume_z_20", "volume", "(ln(V_t+1) − mean_20(ln(V+1))) / std_20(ln(V+1)), 0 when flat", 20),
    _f("volume_change", "volume", "ln((V_t + 1) / (V_{t-1} + 1))", 2),
    _f("vwap_ratio_20", "volume", "C_t / (Σ_20 TP·V / Σ_20 V) − 1, 0 when Σ V = 0", 20),
    _f("day_of_month", "calendar", "day of the month, 1..31", 1),
    _f("days_since_prev", "calendar", "calendar days since the previous row's date", 2),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
WARMUP_ROWS = max(f.lookback for f in FEATURES) - 1  # leading rows without every feature


def check_tier(tier: str, choices: Sequence[str] | None = None) -> str:
    """Refuse a tier name that is not one of ``KNOWN_TIERS``; the message lists ``choices``
    (a CLI passes ``data.tiers``, the tiers this project builds) or else every known tier."""
    if tier not in KNOWN_TIERS:
        shown = [t for t in (choices or KNOWN_TIERS) if t in KNOWN_TIERS] or list(KNOWN_TIERS)
        source = " (data.tiers)" if choices and list(shown) != list(KNOWN_TIERS) else ""
        raise TierHpoError(f"unknown tier {shorten(tier)}; choose one of {', '.join(shown)}{source}")
    return tier


def tier_features(tier: str) -> tuple[str, ...]:
    """Engineered feature names of ``tier`` (a20 ⊂ a50 ⊂ a100), in registry order."""
    return FEATURE_NAMES[: TIER_SIZES[check_tier(tier)]]


# ---- the features ----------------------------------------------------------------------


def compute_features(ohlcv: pd.DataFrame) -> pd.DataFrame:
    """All 100 engineered features (registry order, float64) for a frame with ``date`` + OHLCV.

    Row i of the result uses rows 0..i of ``ohlcv`` only. Leading rows are NaN until a
    feature's lookback is filled; nothing is filled backwards.
    """
    o, h, l, c = (ohlcv[k].astype(np.float64) for k in ("open", "high", "low", "close"))  # noqa: E741
    v = ohlcv["volume"].astype(np.float64)
    dates = pd.to_datetime(ohlcv["date"])
    prev_c = c.shift(1)
    r = np.log(c / prev_c)
    hl = np.log(h / l)
    co = np.log(c / o)
    up = np.log(h / prev_c)
    tr = pd.concat([h - l, (h - prev_c).abs(), (l - prev_c).abs()], axis=1).max(axis=1, skipna=False)
    tp = (h + l + c) / 3
    lv = np.log1p(v)
    f: dict[str, pd.Series] = {}

    def ret(k: int) -> pd.Series:
        return np.log(c / c.shift(k))

    def rv(w: int) -> pd.Series:
        return annualised_rms(r**2, w)

    park_sq = hl**2 / (4 * math.log(2))
    gk_sq = 0.5 * hl**2 - (2 * math.log(2) - 1) * co**2
    rs_sq = np.log(h / c) * np.log(h / o) + np.log(l / c) * np.log(l / o)

    def yang_zhang(w: int) -> pd.Series:
        k = 0.34 / (1.34 + (w + 1) / (w - 1))
        var = rolling_std(np.log(o / prev_c), w) ** 2 + k * rolling_std(co, w) ** 2 + (1 - k) * rolling_mean(rs_sq, w)
        return np.sqrt(ANNUAL * var.clip(lower=0))

    def sma_ratio(w: int) -> pd.Series:
        return c / rolling_mean(c, w) - 1

    def vol_ratio(w: int) -> pd.Series:
        return np.log((v + 1) / (rolling_mean(v, w) + 1))

    up_hit = (up >= UP_MOVE).astype(np.float64).where(up.notna())
    ema12, ema26 = ewm_mean(c, 2 / 13, 12), ewm_mean(c, 2 / 27, 26)
    macd = (ema12 - ema26) / c
    macd_signal = ewm_mean(macd, 2 / 10, 9)
    std20 = rolling_std(c, 20)

    # Wilder's directional movement: +DM when today's up-move beats the down-move, and vice versa.
    up_move, down_move = h.diff(), -l.diff()
    plus_dm = up_move.where((up_move > down_move) & (up_move > 0), 0.0).where(up_move.notna())
    minus_dm = down_move.where((down_move > up_move) & (down_move > 0), 0.0).where(down_move.notna())
    tr_s = ewm_mean(tr, 1 / 14, 14)
    plus_di = 100 * safe_div(ewm_mean(plus_dm, 1 / 14, 14), tr_s, 0.0)
    minus_di = 100 * safe_div(ewm_mean(minus_dm, 1 / 14, 14), tr_s, 0.0)
    di_sum = plus_di + minus_di
    dx = 100 * safe_div((plus_di - minus_di).abs(), di_sum, 0.0)

    money_flow = tp * v
    tp_up = tp.diff()
    pos_flow = money_flow.where(tp_up > 0, 0.0).where(tp_up.notna())
    flow_sum = money_flow.where(tp_up.notna()).rolling(14, min_periods=14).sum()
    rv20 = rv(20)

    f["ret_1"] = r
    f["ret_5"] = ret(5)
    f["ret_20"] = ret(20)
    f["rv_5"] = rv(5)
    f["rv_20"] = rv20
    f["rv_60"] = rv(60)
    f["parkinson_5"] = annualised_rms(park_sq, 5)
    f["parkinson_20"] = annualised_rms(park_sq, 20)
    f["garman_klass_5"] = annualised_rms(gk_sq, 5)
    f["garman_klass_20"] = annualised_rms(gk_sq, 20)
    f["hl_range"] = hl
    f["up_excursion"] = up
    f["up_hit_20"] = rolling_mean(up_hit, 20)
    f["atr_14"] = rolling_mean(tr, 14) / c
    f["sma_ratio_20"] = sma_ratio(20)
    f["sma_ratio_50"] = sma_ratio(50)
    f["sma_ratio_200"] = sma_ratio(200)
    f["rsi_14"] = wilder_rsi(c, 14)
    f["volume_ratio_20"] = vol_ratio(20)
    f["day_of_week"] = dates.dt.day_of_week.astype(np.float64)

    f["ret_2"] = ret(2)
    f["ret_3"] = ret(3)
    f["ret_10"] = ret(10)
    f["ret_60"] = ret(60)
    f["rv_10"] = rv(10)
    f["rv_120"] = rv(120)
    f["parkinson_10"] = annualised_rms(park_sq, 10)
    f["parkinson_60"] = annualised_rms(park_sq, 60)
    f["garman_klass_10"] = annualised_rms(gk_sq, 10)
    f["garman_klass_60"] = annualised_rms(gk_sq, 60)
    f["rogers_satchell_20"] = annualised_rms(rs_sq, 20)
    f["yang_zhang_20"] = yang_zhang(20)
    f["gap_ret"] = np.log(o / prev_c)
    f["oc_ret"] = co
    f["close_location"] = safe_div(c - l, h - l, 0.5)
    f["up_excursion_mean_5"] = rolling_mean(up, 5)
    f["rv_ratio_5_20"] = safe_div(f["rv_5"], rv20, 1.0)
    f["rv_ratio_20_120"] = safe_div(rv20, f["rv_120"], 1.0)
    f["sma_ratio_10"] = sma_ratio(10)
    f["sma_ratio_100"] = sma_ratio(100)
    f["sma_cross_20_50"] = rolling_mean(c, 20) / rolling_mean(c, 50) - 1
    f["sma_cross_50_200"] = rolling_mean(c, 50) / rolling_mean(c, 200) - 1
    f["dist_high_20"] = np.log(c / h.rolling(20, min_periods=20).max())
    f["dist_low_20"] = np.log(c / l.rolling(20, min_periods=20).min())
    f["macd"] = macd
    f["macd_signal"] = macd_signal
    f["stoch_k_14"] = stochastic_k(c, h, l, 14)
    f["bollinger_b_20"] = safe_div(c - rolling_mean(c, 20) + 2 * std20, 4 * std20, 0.5)
    f["volume_ratio_5"] = vol_ratio(5)
    f["month"] = dates.dt.month.astype(np.float64)

    f["ret_120"] = ret(120)
    f["ret_252"] = ret(252)
    f["rv_252"] = rv(252)
    f["downside_vol_20"] = annualised_rms(r.clip(upper=0) ** 2, 20)
    f["upside_vol_20"] = annualised_rms(r.clip(lower=0) ** 2, 20)
    f["vol_of_vol_60"] = safe_div(rolling_std(rv20, 60), rolling_mean(rv20, 60), 0.0)
    f["rv_ratio_20_252"] = safe_div(rv20, f["rv_252"], 1.0)
    f["parkinson_120"] = annualised_rms(park_sq, 120)
    f["garman_klass_120"] = annualised_rms(gk_sq, 120)
    f["rogers_satchell_5"] = annualised_rms(rs_sq, 5)
    f["rogers_satchell_60"] = annualised_rms(rs_sq, 60)
    f["yang_zhang_60"] = yang_zhang(60)
    f["hl_range_mean_5"] = rolling_mean(hl, 5)
    f["hl_range_mean_20"] = rolling_mean(hl, 20)
    f["atr_5"] = rolling_mean(tr, 5) / c
    f["up_excursion_max_5"] = up.rolling(5, min_periods=5).max()
    f["up_excursion_mean_20"] = rolling_mean(up, 20)
    f["up_hit_60"] = rolling_mean(up_hit, 60)
    f["down_excursion"] = np.log(l / prev_c)
    f["upper_shadow"] = np.log(h / np.maximum(o, c))
    f["lower_shadow"] = np.log(np.minimum(o, c) / l)
    f["skew_20"] = rolling_moment(r, 20, "skew")
    f["kurt_20"] = rolling_moment(r, 20, "kurt")
    f["skew_60"] = rolling_moment(r, 60, "skew")
    f["max_ret_20"] = r.rolling(20, min_periods=20).max()
    f["min_ret_20"] = r.rolling(20, min_periods=20).min()
    f["autocorr_60"] = rolling_moment(r, 60, "corr", r.shift(1))
    f["sma_ratio_5"] = sma_ratio(5)
    f["ema_ratio_12"] = c / ema12 - 1
    f["ema_ratio_26"] = c / ema26 - 1
    f["slope_20"] = rolling_slope(np.log(c), 20)
    f["slope_60"] = rolling_slope(np.log(c), 60)
    f["dist_high_252"] = np.log(c / h.rolling(252, min_periods=252).max())
    f["dist_low_252"] = np.log(c / l.rolling(252, min_periods=252).min())
    f["bollinger_width_20"] = 4 * std20 / rolling_mean(c, 20)
    f["macd_hist"] = macd - macd_signal
    f["rsi_7"] = wilder_rsi(c, 7)
    f["rsi_28"] = wilder_rsi(c, 28)
    f["stoch_k_5"] = stochastic_k(c, h, l, 5)
    f["stoch_d_14"] = rolling_mean(f["stoch_k_14"], 3)
    f["cci_20"] = safe_div(tp - rolling_mean(tp, 20), 0.015 * rolling_mean_abs_dev(tp, 20), 0.0)
    f["adx_14"] = ewm_mean(dx, 1 / 14, 14)
    f["di_spread_14"] = safe_div(plus_di - minus_di, di_sum, 0.0)
    f["mfi_14"] = 100 * safe_div(pos_flow.rolling(14, min_periods=14).sum(), flow_sum, 0.5)
    f["volume_ratio_60"] = vol_ratio(60)
    f["volume_z_20"] = safe_div(lv - rolling_mean(lv, 20), rolling_std(lv, 20), 0.0)
    f["volume_change"] = lv.diff()
    f["vwap_ratio_20"] = safe_div(c * v.rolling(20, min_periods=20).sum(), (tp * v).rolling(20, min_periods=20).sum(), 1.0) - 1
    f["day_of_month"] = dates.dt.day.astype(np.float64)
    f["days_since_prev"] = dates.diff().dt.days.astype(np.float64)

    out = pd.DataFrame({name: f[name] for name in FEATURE_NAMES}, index=ohlcv.index)
    return out.astype(np.float64)


if __name__ == "__main__":
    from training.feature_docs import feature_table_markdown

    print(feature_table_markdown(), end="")
