"""Calendar gaps in daily data: found once, refused by default, or cut around when allowed.

A *gap* is a step between consecutive rows longer than ``data.max_gap_days`` calendar days
(default 14, about 10 trading days: long weekends, holidays and the 2001 and 2012 market
closures are shorter). A six-month hole would otherwise make the h-day label of the day
before it a six-month-ahead label and ``ret_1`` a six-month return.

* ``data.allow_gaps: false`` (default): ingest and tiers refuse the data with one line.
* ``data.allow_gaps: true``: the rows are split into *segments* at every gap. The tier builder
  computes features and labels per segment (each segment has its own warm-up, its last
  ``max(horizons)`` rows have no label and are dropped), and ``training.splits.window_ends``
  drops every window that spans a segment boundary. So no feature lookback, input window or
  label window ever spans a gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.errors import TierHpoError


@dataclass(frozen=True)
class Gap:
    before: pd.Timestamp  # last date before the gap
    after: pd.Timestamp  # first date after it
    days: int  # calendar days between them


def find_gaps(dates: pd.Series, max_gap_days: int) -> list[Gap]:
    """Every step between consecutive (sorted) dates longer than ``max_gap_days``."""
    d = pd.to_datetime(pd.Series(dates)).reset_index(drop=True)
    steps = d.diff().dt.days
    idx = np.flatnonzero((steps > max_gap_days).to_numpy())
    return [Gap(d.iloc[i - 1], d.iloc[i], int(steps.iloc[i])) for i in idx]


def segment_ids(dates: pd.Series, max_gap_days: int) -> np.ndarray:
    """(N,) int: 0 for the rows before the first gap, 1 after it, ..."""
    steps = pd.to_datetime(pd.Series(dates)).reset_index(drop=True).diff().dt.days
    return np.cumsum((steps > max_gap_days).to_numpy()).astype(np.int64)


def check_gaps(dates: pd.Series, max_gap_days: int, allow_gaps: bool, where: str) -> list[Gap]:
    """Raise on gaps unless they are allowed; return them (for a note) when they are."""
    gaps = find_gaps(dates, max_gap_days)
    if gaps and not allow_gaps:
        worst = max(gaps, key=lambda g: g.days)
        raise TierHpoError(
            f"{where}: {len(gaps)} calendar gap(s) longer than data.max_gap_days={max_gap_days}, the longest "
            f"{worst.days} days from {worst.before:%Y-%m-%d} to {worst.after:%Y-%m-%d}; fill the hole, raise "
            "data.max_gap_days, or set data.allow_gaps: true to drop every window and label that spans a gap"
        )
    return gaps
