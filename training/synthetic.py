"""A synthetic tier with a real, learnable signal, for tests and benchmark fallbacks.

Prices follow a stochastic-volatility random walk, so volatility clusters; the features are rolling
volatility and range measures (what a real tier is made of) plus a few pure-noise columns; the
label is the project's target, ``max(High[t+1..t+h]) >= Close[t] * (1 + threshold)``, which
depends on the coming volatility and is therefore predictable from the features.
"""

from __future__ import annotations

import numpy as np

from training.dataset import TierData


def synthetic_tier(
    n_days: int = 900,
    n_features: int = 8,
    context_len: int = 16,
    horizon: int = 1,
    threshold: float = 0.01,
    seed: int = 0,
    split: tuple[float, float, float] = (0.70, 0.15, 0.15),
    tier: str = "synthetic",
) -> TierData:
    """``n_days`` rows of ``n_features`` standardised features, split train/val/test in time
    order with a purge gap of ``context_len + horizon`` rows between splits."""
    rng = np.random.default_rng(seed)
    warmup = 64  # rows dropped so every rolling feature is defined
    n = n_days + warmup + horizon
    shocks = rng.standard_normal(n)
    log_vol = np.empty(n)  # stochastic volatility: persistent AR(1) log-volatility (calm years, crises)
    log_vol[0] = 0.0
    for t in range(1, n):
        log_vol[t] = 0.9 * log_vol[t - 1] + 0.35 * rng.standard_normal()
    vol = 0.008 * np.exp(log_vol)
    ret = vol * shocks
    close = 100 * np.exp(np.cumsum(ret))
    open_ = np.concatenate([close[:1], close[:-1]])
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(n)) * vol * 0.5)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * vol * 0.5)

    day_range = np.log(high / low)
    columns = []
    for window in (20, 10, 40, 5, 60, 30, 15, 8, 3, 2):  # the most informative first
        columns.append(_rolling_mean(day_range, window))
        columns.append(_rolling_std(ret, window))
    columns += [day_range, np.abs(ret)]
    signal = np.stack(columns, axis=1)
    features = np.empty((n, n_features))
    for j in range(n_features):
        if j < signal.shape[1] and j % 4 != 3:  # every 4th column is pure noise
            features[:, j] = signal[:, j]
        else:
            features[:, j] = rng.standard_normal(n)

    future_high = np.full(n, -np.inf)
    for k in range(1, horizon + 1):
        future_high[:-k] = np.maximum(future_high[:-k], high[k:])
    labels = (future_high >= close * (1 + threshold)).astype(np.float32)

    rows = slice(warmup, warmup + n_days)  # the last `horizon` rows have no label
    features, labels = features[rows], labels[rows]
    dates = np.datetime64("2001-01-02") + np.arange(n_days).astype("timedelta64[D]")
    gap = context_len + horizon
    n_train = int(split[0] * n_days)
    n_val = int(split[1] * n_days)
    bounds = {
        "train": (0, n_train),
        "val": (n_train + gap, n_train + n_val),
        "test": (n_train + n_val + gap, n_days),
    }
    names = [f"f{j:02d}" for j in range(n_features)]
    names[0] = "parkinson_5"  # column 0 is a range volatility: the column the ``vol`` baseline reads
    return TierData.from_arrays(features, labels, dates, names, context_len, horizon, bounds, tier=tier)


def _rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    view = np.lib.stride_tricks.sliding_window_view(x, window)
    out[window - 1:] = view.std(axis=1)
    return out


def _rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    out[window - 1:] = np.lib.stride_tricks.sliding_window_view(x, window).mean(axis=1)
    return out
