"""Binary targets: did the price rise by ``threshold`` within the next ``h`` days?

``target_h{h}`` at day t is 1 when max(High[t+1..t+h]) >= Close[t] * (1 + threshold), else 0.
Rows whose window t+1..t+h runs past the last row have no label (NaN here); the tier
builder drops them, it never fills them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def label_name(horizon: int) -> str:
    return f"target_h{horizon}"


def make_labels(high: pd.Series, close: pd.Series, horizons: Sequence[int], threshold: float) -> pd.DataFrame:
    """One float column per horizon: 1.0 / 0.0, NaN where the future window is incomplete."""
    high = high.astype(np.float64)
    close = close.astype(np.float64)
    out = {}
    for h in horizons:
        # (N, h) future highs; skipna=False so a window cut by the end of the data stays NaN.
        future = pd.concat([high.shift(-k) for k in range(1, h + 1)], axis=1)
        future_max = future.max(axis=1, skipna=False)
        hit = (future_max >= close * (1.0 + threshold)).astype(np.float64)
        out[label_name(h)] = hit.where(future_max.notna())
    return pd.DataFrame(out, index=high.index)


def labels_by_segment(
    ohlcv: pd.DataFrame, horizons: Sequence[int], threshold: float, max_gap_days: int
) -> pd.DataFrame:
    """``make_labels`` computed separately on every gap-free segment (``training.gaps``), indexed by date.

    What the tier builder does, recomputed from the raw prices: the validate stage compares it
    with the labels stored in the tier parquet. A label never looks across a gap (it is NaN there).
    """
    from training.gaps import segment_ids

    base = ohlcv.reset_index(drop=True)
    parts = [
        make_labels(part["high"], part["close"], horizons, threshold)
        for _, part in base.groupby(segment_ids(base["date"], max_gap_days), sort=True)
    ]
    out = pd.concat(parts).sort_index()
    out.index = pd.to_datetime(base["date"]).to_numpy()
    return out
