"""What the model and the baselines see: stationary forms of OHLCV plus the tier's engineered features.

The tier parquet keeps the 5 raw base columns (``open, high, low, close, volume``): labels are
computed from them and validation recomputes the labels from them. Raw price and volume
*levels* are not stationary (train-standardised close sits at z = 4 to 9 on the test split
of the S&P 500), so they never reach a network or a baseline. Instead the inputs start with
five scale-free forms of the same bar, computed causally by the tier builder:

* ``log_oc``      = ln(O_t / C_t)
* ``log_hc``      = ln(H_t / C_t)
* ``log_lc``      = ln(L_t / C_t)
* ``log_ret``     = ln(C_t / C_{t-1})
* ``log_vol_rel`` = ln((V_t + 1) / (mean_20(V) + 1)), volume against its trailing 20-day mean
  (+1 so a zero-volume day stays finite; for index volumes of 1e8+ the +1 is invisible)

``input_columns(tier)`` is the one list every consumer uses (``training.dataset.load_tier``,
the baselines, the served model's signature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.features import BASE_COLUMNS, tier_features

STATIONARY_COLUMNS: tuple[str, ...] = ("log_oc", "log_hc", "log_lc", "log_ret", "log_vol_rel")
STATIONARY_FORMULAS: dict[str, str] = {
    "log_oc": "ln(O_t / C_t)",
    "log_hc": "ln(H_t / C_t)",
    "log_lc": "ln(L_t / C_t)",
    "log_ret": "ln(C_t / C_{t-1})",
    "log_vol_rel": "ln((V_t + 1) / (mean_20(V) + 1))",
}
STATIONARY_LOOKBACK: dict[str, int] = {"log_oc": 1, "log_hc": 1, "log_lc": 1, "log_ret": 2, "log_vol_rel": 20}
VOLUME_WINDOW = 20


@dataclass(frozen=True)
class TiersConfig:
    # Scale open/high/low/close by adj_close / close when the raw file has adjusted closes,
    # so splits and dividends do not show up as fake returns (a no-op for the S&P 500 index).
    use_adjusted: bool = True


def adjusted(ohlcv: pd.DataFrame, use_adjusted: bool) -> pd.DataFrame:
    if not use_adjusted or "adj_close" not in ohlcv.columns:
        return ohlcv[["date", *BASE_COLUMNS]]
    factor = ohlcv["adj_close"] / ohlcv["close"]
    out = ohlcv[["date", *BASE_COLUMNS]].copy()
    for col in ("open", "high", "low", "close"):
        out[col] = ohlcv[col] * factor
    return out


def stationary_base(ohlcv: pd.DataFrame) -> pd.DataFrame:
    """The 5 stationary base inputs (float64, causal) of a frame with open/high/low/close/volume."""
    o, h, l, c = (ohlcv[k].astype(np.float64) for k in ("open", "high", "low", "close"))  # noqa: E741
    v = ohlcv["volume"].astype(np.float64)
    out = {
        "log_oc": np.log(o / c),
        "log_hc": np.log(h / c),
        "log_lc": np.log(l / c),
        "log_ret": np.log(c / c.shift(1)),
        "log_vol_rel": np.log((v + 1) / (v.rolling(VOLUME_WINDOW, min_periods=VOLUME_WINDOW).mean() + 1)),
    }
    return pd.DataFrame(out, index=ohlcv.index).astype(np.float64)


def input_columns(tier: str) -> tuple[str, ...]:
    """The model's and the baselines' input columns for ``tier``: stationary base + engineered features."""
    return (*STATIONARY_COLUMNS, *tier_features(tier))
