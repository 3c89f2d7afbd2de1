"""Causal trailing-window statistics that ``training.features`` builds its 100 features from.

Every function returns, at row t, a value computed from rows 0..t only: trailing windows of
``w`` rows (``min_periods=w``, so NaN until a window is full), recursive EWMs with
``adjust=False``, and ``diff`` with positive lags. Flat data (a zero denominator, no variance)
gives a stated neutral value instead of inf/NaN. pandas' rolling/ewm do the work; the
strided-window helpers exist for statistics pandas has no rolling form of (OLS slope, mean
absolute deviation), as one vectorised numpy call instead of a per-window ``apply``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

ANNUAL = 252  # trading days per year, for annualised volatilities


def safe_div(num: pd.Series, den: pd.Series, fill: float) -> pd.Series:
    """num / den, with ``fill`` where den == 0 (flat data) instead of inf/NaN."""
    out = num / den.where(den != 0)
    return out.where(~(den == 0), fill)


def rolling_mean(x: pd.Series, w: int) -> pd.Series:
    return x.rolling(w, min_periods=w).mean()


def rolling_std(x: pd.Series, w: int) -> pd.Series:
    return x.rolling(w, min_periods=w).std()


def ewm_mean(x: pd.Series, alpha: float, min_periods: int) -> pd.Series:
    return x.ewm(alpha=alpha, adjust=False, min_periods=min_periods).mean()


def annualised_rms(sq: pd.Series, w: int) -> pd.Series:
    """Annualised root mean of a per-day variance estimate over w days (clipped at 0)."""
    return np.sqrt(ANNUAL * rolling_mean(sq, w).clip(lower=0))


def rolling_moment(x: pd.Series, w: int, stat: str, other: pd.Series | None = None) -> pd.Series:
    """Rolling skew / kurt / corr, 0 (neutral) where a full window has no variance."""
    roll = x.rolling(w, min_periods=w)
    out = roll.corr(other) if stat == "corr" else getattr(roll, stat)()
    full = (x if other is None else other).rolling(w, min_periods=w).count() == w
    return out.where(~(full & out.isna()), 0.0)


def window_apply(x: pd.Series, w: int, fn) -> pd.Series:
    """``fn`` over trailing windows as one vectorised call on a (n - w + 1, w) strided view."""
    values = x.to_numpy(dtype=np.float64)
    out = np.full(len(values), np.nan)
    if len(values) >= w:
        out[w - 1 :] = fn(sliding_window_view(values, w))
    return pd.Series(out, index=x.index)


def rolling_slope(y: pd.Series, w: int) -> pd.Series:
    k = np.arange(w, dtype=np.float64)
    weights = (k - k.mean()) / ((k - k.mean()) ** 2).sum()
    return window_apply(y, w, lambda win: win @ weights)


def rolling_mean_abs_dev(x: pd.Series, w: int) -> pd.Series:
    return window_apply(x, w, lambda win: np.abs(win - win.mean(axis=1, keepdims=True)).mean(axis=1))


def wilder_rsi(close: pd.Series, n: int) -> pd.Series:
    delta = close.diff()
    gain = ewm_mean(delta.clip(lower=0), 1 / n, n)
    loss = ewm_mean((-delta).clip(lower=0), 1 / n, n)
    rsi = 100 - 100 / (1 + gain / loss.where(loss != 0))
    rsi = rsi.where(loss != 0, 100.0)  # no losses in the window: RSI is 100 by definition
    return rsi.where((gain != 0) | (loss != 0), 50.0).where(gain.notna())


def stochastic_k(close: pd.Series, high: pd.Series, low: pd.Series, w: int) -> pd.Series:
    lo = low.rolling(w, min_periods=w).min()
    hi = high.rolling(w, min_periods=w).max()
    return safe_div(close - lo, hi - lo, 0.5)
