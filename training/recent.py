"""Raw OHLCV of recent days -> the served model's input window for the newest day.

This is the one function behind ``tierhpo predict`` and the README's serving example: it computes
a tier's model inputs (``training.inputs.input_columns``: the 5 stationary base columns plus the
tier's engineered features) exactly as ``tierhpo tiers`` does (``training.inputs.adjusted``,
``training.inputs.stationary_base``, ``training.features.compute_features``), and returns the
last ``context_len`` rows: the raw (unscaled) feature frame the registered pyfunc
(``training.serving``) takes, one row per day, oldest first, indexed by date.

History needed (``history_needed``): the longest lookback of the tier's inputs minus one (the
rows before the first day on which every input has a value) plus ``context_len`` days for the
window itself; a20 and a50 need 199 + context_len days, a100 252 + context_len. Every feature is
a trailing window of at most that many rows, so it is identical to the pipeline's value, except
the recursive EWMs (RSI, MACD, ADX), whose start-up weight decays as (1 - a)^n: on the S&P 500
the largest difference from the tier parquet is 1e-7 of the value for a20 (rsi_14) and 1e-4
for a100 (rsi_28, 0.007 RSI points, about 0.001 of its spread).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.errors import TierHpoError
from training.features import FEATURES, compute_features, tier_features
from training.gaps import find_gaps
from training.inputs import STATIONARY_LOOKBACK, adjusted, input_columns, stationary_base

_LOOKBACK = {f.name: f.lookback for f in FEATURES} | STATIONARY_LOOKBACK


def warmup_rows(tier: str) -> int:
    """Leading rows without a value for some input of ``tier``: its longest lookback minus one."""
    return max(_LOOKBACK[name] for name in input_columns(tier)) - 1


def history_needed(tier: str, context_len: int) -> int:
    """Days of raw OHLCV needed to predict the newest day: warm-up plus one window."""
    return warmup_rows(tier) + context_len


def feature_window(ohlcv: pd.DataFrame, tier: str, context_len: int, *, use_adjusted: bool = True,
                   max_gap_days: int | None = None, where: str = "source") -> pd.DataFrame:
    """Validated raw OHLCV (``pipelines.ohlcv.canonical_ohlcv``) -> the newest day's window.

    Returns ``context_len`` rows of ``input_columns(tier)`` (float64), indexed by ``date``,
    oldest first. Raises ``TierHpoError`` (one line) when the history is shorter than
    ``history_needed``, when the rows it uses span a calendar gap over ``max_gap_days``
    (the pipeline never builds a window across one), or when a feature is not finite.
    """
    need = history_needed(tier, context_len)
    if len(ohlcv) < need:
        raise TierHpoError(
            f"{where}: {len(ohlcv)} days of history, need at least {need} for tier {tier} "
            f"(feature warm-up {warmup_rows(tier)} + context_len {context_len}); give a longer history"
        )
    base = adjusted(ohlcv, use_adjusted).iloc[-need:].reset_index(drop=True)
    if max_gap_days is not None:
        gaps = find_gaps(base["date"], max_gap_days)
        if gaps:
            g = gaps[-1]
            raise TierHpoError(
                f"{where}: the last {need} days span a calendar gap of {g.days} days ({g.before:%Y-%m-%d} to "
                f"{g.after:%Y-%m-%d}, over data.max_gap_days={max_gap_days}); give {need} days without a gap"
            )
    engineered = list(tier_features(tier))
    frame = pd.concat([stationary_base(base), compute_features(base)[engineered]], axis=1)
    window = frame[list(input_columns(tier))].iloc[-context_len:]
    window.index = pd.DatetimeIndex(base["date"].iloc[-context_len:], name="date")
    values = window.to_numpy()
    if not np.isfinite(values).all():
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(values)))
        raise TierHpoError(
            f"{where}: feature {window.columns[col]} is not finite on {window.index[row]:%Y-%m-%d}; check the raw rows"
        )
    return window.astype(np.float64)
