"""Chronological train / val / test splits with a purge gap between them.

Row layout over the N rows of a tier dataset (half-open ranges)::

    [0, a) train | gap | [a + gap, b) val | gap | [b + gap, N) test

The gap (default max(horizons) + context_len rows) keeps every label window (t+1..t+h) of
one split away from the input windows and labels of the next, so no information crosses a
boundary in either direction. A window of ``context_len`` days ending at day t belongs to a
split only if all its days lie inside that split's range (see ``TierData.from_arrays``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from common.errors import TierHpoError

SPLITS = ("train", "val", "test")
Bounds = dict[str, tuple[int, int]]


def split_bounds(n_rows: int, fractions: Mapping[str, float], gap: int) -> Bounds:
    """Half-open row ranges per split; the fractions share the rows left after the two gaps."""
    usable = n_rows - 2 * gap
    total = sum(fractions[s] for s in SPLITS)
    n_train = math.floor(max(usable, 0) * fractions["train"] / total)
    n_val = math.floor(max(usable, 0) * fractions["val"] / total)
    train = (0, n_train)
    val = (n_train + gap, n_train + gap + n_val)
    test = (val[1] + gap, max(n_rows, val[1] + gap))
    return {"train": train, "val": val, "test": test}


def windows_per_split(bounds: Bounds, context_len: int, breaks: Sequence[int] = ()) -> dict[str, int]:
    """How many complete ``context_len`` windows (spanning no break) each split holds."""
    return {s: len(window_ends(lo, hi, context_len, breaks)) for s, (lo, hi) in bounds.items()}


def check_bounds(bounds: Bounds, context_len: int, min_windows: int, breaks: Sequence[int] = ()) -> None:
    counts = windows_per_split(bounds, context_len, breaks)
    short = {s: n for s, n in counts.items() if n < min_windows}
    if short:
        detail = ", ".join(f"{s} {n}" for s, n in short.items())
        raise TierHpoError(
            f"too few rows for the splits: {detail} window(s) < data.min_windows_per_split={min_windows}; "
            "use a longer history or lower data.context_len / data.min_windows_per_split"
        )


def minimum_rows(fractions: Mapping[str, float], gap: int, context_len: int, min_windows: int) -> int:
    """Smallest number of labelled rows whose splits each hold ``min_windows`` windows."""
    per_split = context_len - 1 + min_windows
    n = 2 * gap + 3 * per_split
    while min(windows_per_split(split_bounds(n, fractions, gap), context_len).values()) < min_windows:
        n += 1
    return n


def window_ends(lo: int, hi: int, context_len: int, breaks: Sequence[int] = ()) -> np.ndarray:
    """Last-day rows ``t`` of every complete window inside ``[lo, hi)`` that spans no break.

    ``breaks`` are the rows where a new segment starts (after a calendar gap, see
    ``training.gaps``); a window ``t - context_len + 1 .. t`` containing a break row other
    than its first is dropped.
    """
    ends = np.arange(lo + context_len - 1, hi, dtype=np.int64)
    for b in breaks:
        ends = ends[~((ends - context_len + 1 < b) & (b <= ends))]
    return ends
