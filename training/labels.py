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
