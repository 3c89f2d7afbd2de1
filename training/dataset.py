"""One tier at one horizon as training-ready arrays: standardised features, labels, purged splits.

A sample is the window of ``context_len`` consecutive days ending at day ``t``; its label is
``target_h{h}`` at day ``t``. ``split_ends[split]`` holds every ``t`` whose whole window lies
inside that split's row range, so no input window crosses a split boundary, and the purge gap
recorded with the dataset keeps label windows apart too.

Features are standardised with the *training split's* mean and std (global standardisation,
not per-window: per-window scaling would erase the volatility level, the main signal).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import limits
from common.errors import TierHpoError, shorten
from training.features import KNOWN_TIERS, check_tier  # noqa: F401  (re-exported: callers import them here)
from training.splits import window_ends
from training.validation_record import ensure_validated

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.70
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if min(values) <= 0 or abs(sum(values) - 1.0) > 1e-6:
            raise TierHpoError(f"data.split: train/val/test must be positive and sum to 1, got {values}")

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class DataConfig:
    """The shared ``data`` section of params.yaml: facts about the dataset every stage agrees on."""

    symbol: str = "SPY"
    tiers: list[str] = field(default_factory=lambda: list(KNOWN_TIERS))
    horizons: list[int] = field(default_factory=lambda: [1, 2, 3, 5])
    threshold: float = 0.01
    context_len: int = 32
    split: SplitFractions = field(default_factory=SplitFractions)
    purge_extra: int = 0  # rows added to the purge gap max(horizons) + context_len
    min_windows_per_split: int = 100
    max_gap_days: int = limits.MAX_GAP_DAYS  # longer calendar gaps between rows: refused (training.gaps)
    allow_gaps: bool = False  # true: keep them, drop every window and label that spans one

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        for tier in self.tiers:
            try:
                check_tier(tier)
            except TierHpoError as exc:
                raise TierHpoError(f"data.tiers: {exc}") from None
        if not self.horizons or min(self.horizons) < 1 or len(set(self.horizons)) != len(self.horizons):
            raise TierHpoError(f"data.horizons: need distinct positive integers, got {shorten(self.horizons)}")
        if not 0 < self.threshold < 1:
            raise TierHpoError(f"data.threshold: must be in (0, 1), got {self.threshold}")
        if self.context_len < 2:
            raise TierHpoError(f"data.context_len: must be >= 2, got {self.context_len}")
        if self.purge_extra < 0 or self.min_windows_per_split < 1:
            raise TierHpoError("data.purge_extra must be >= 0 and data.min_windows_per_split >= 1")
        if self.max_gap_days < 1:
            raise TierHpoError(f"data.max_gap_days: must be >= 1 calendar day, got {self.max_gap_days}")

    @property
    def gap(self) -> int:
        """Purge gap in rows between consecutive splits."""
        return max(self.horizons) + self.context_len + self.purge_extra


def load_data_config(**overrides: Any) -> DataConfig:
    from common import config

    return config.load(DataConfig, "data", **overrides)


def check_symbol(symbol: str) -> str:
    """A symbol names files (data/raw/<symbol>.csv): short, letters, digits, '.', '_' or '-'."""
    if not symbol:
        raise TierHpoError("symbol is empty; give one such as SPY (--symbol or data.symbol)")
    if len(symbol) > limits.MAX_SYMBOL_CHARS:
        raise TierHpoError(
            f"symbol {shorten(symbol)} is too long: at most {limits.MAX_SYMBOL_CHARS} characters (it names files)"
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", symbol):
        raise TierHpoError(f"symbol {shorten(symbol)} must be letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    return symbol


def check_horizon(horizon: int, horizons: Sequence[int]) -> int:
    """Refuse ``--horizon`` below 1 (a label looks at least one day ahead) with the configured ones."""
    if horizon < 1:
        raise TierHpoError(
            f"--horizon must be >= 1 (days ahead of the label), got {horizon}; "
            f"data.horizons lists {', '.join(map(str, horizons))}"
        )
    return horizon


@dataclass(frozen=True)
class TierData:
    features: np.ndarray  # (N, F) float32, standardised with train statistics
    labels: np.ndarray  # (N,) float32 in {0, 1}
    dates: np.ndarray  # (N,) datetime64[D]
    feature_names: tuple[str, ...]
    context_len: int
    horizon: int
    split_ends: dict[str, np.ndarray]  # split -> (n_split,) int64 row index of each window's last day
    mean: np.ndarray  # (F,) float64, train-split mean of the raw features
    std: np.ndarray  # (F,) float64, train-split std of the raw features
    tier: str = ""
    symbol: str = ""

    @classmethod
    def from_arrays(
        cls,
        raw_features: np.ndarray,
        labels: np.ndarray,
        dates: np.ndarray,
        feature_names: tuple[str, ...] | list[str],
        context_len: int,
        horizon: int,
        bounds: dict[str, tuple[int, int]],
        tier: str = "",
        symbol: str = "",
        breaks: tuple[int, ...] | list[int] = (),
    ) -> TierData:
        """Build from raw (unscaled) rows; ``bounds[split] = (start, stop)`` are half-open row ranges.

        ``breaks``: rows that start a new segment after a calendar gap; windows spanning one are dropped.
        """
        raw = np.asarray(raw_features, dtype=np.float64)
        if raw.ndim != 2 or len(raw) != len(labels) or len(raw) != len(dates):
            raise ValueError("features (N, F), labels (N,) and dates (N,) must agree in N")
        if len(feature_names) != raw.shape[1]:
            raise ValueError("one feature name per column is required")
        start, stop = bounds["train"]
        train_rows = raw[start:stop]
        mean = train_rows.mean(axis=0)
        std = train_rows.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant feature stays 0 instead of NaN
        split_ends = {}
        for split in SPLITS:
            lo, hi = bounds[split]
            split_ends[split] = window_ends(lo, hi, context_len, breaks)
        return cls(
            features=((raw - mean) / std).astype(np.float32),
            labels=np.asarray(labels, dtype=np.float32),
            dates=np.asarray(dates, dtype="datetime64[D]"),
            feature_names=tuple(feature_names),
            context_len=context_len,
            horizon=horizon,
            split_ends=split_ends,
            mean=mean,
            std=std,
            tier=tier,
            symbol=symbol,
        )

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def base_rate(self) -> float:
        """Positive rate of the training labels (the no-skill predictor)."""
        return float(self.labels[self.split_ends["train"]].mean())

    def window_index(self, split: str) -> np.ndarray:
        """(n, L) row indices of every window of ``split``, oldest day first."""
        ends = self.split_ends[split]
        offsets = np.arange(-self.context_len + 1, 1, dtype=np.int64)
        return ends[:, None] + offsets[None, :]

    def windows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Materialised windows ``X (n, L, F)`` and labels ``y (n,)``; prefer index gathers in hot loops."""
        return self.features[self.window_index(split)], self.labels[self.split_ends[split]]

    def last_day(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Features of each window's last day ``(n, F)`` and labels, as the baselines see them."""
        ends = self.split_ends[split]
        return self.features[ends], self.labels[ends]

    def labels_of(self, split: str) -> np.ndarray:
        return self.labels[self.split_ends[split]]


def read_split_meta(symbol: str, tier: str) -> dict[str, Any]:
    """The sidecar JSON that ``tierhpo tiers`` writes next to the tier parquet."""
    from common import paths

    path = paths.splits_path(symbol, tier)
    if not path.is_file():
        raise TierHpoError(f"no split file {path}; build the tier first: tierhpo tiers --tier {tier}")
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        meta = None
    required = {"splits", "gap", "n_rows", "context_len", "horizons", "feature_columns", "label_columns"}
    if not isinstance(meta, dict) or not required <= set(meta):
        raise TierHpoError(f"{path} is not a valid split file; rebuild it: tierhpo tiers --tier {tier}")
    return meta


def read_tier_frame(path: str | Path, columns: list[str] | None = None):
    """A tier parquet as a DataFrame; an unreadable file is a one-line error, not a traceback."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TierHpoError(f"no tier dataset at {path}; build it with `tierhpo tiers`")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TierHpoError(f"cannot read {path} ({first}); rebuild it with `tierhpo tiers`") from exc


def load_tier(
    symbol: str,
    tier: str,
    horizon: int,
    context_len: int | None = None,
    *,
    include_base: bool = True,
    require_validated: bool = False,
) -> TierData:
    """Tier ``tier`` at ``horizon`` as a ``TierData``, with the splits recorded by ``tierhpo tiers``.

    Features are ``training.inputs.input_columns(tier)``: the 5 stationary forms of the OHLCV bar
    (unless ``include_base=False``) followed by the tier's engineered features, standardised with
    training-split statistics. The raw price and volume levels stay in the parquet and never
    reach a model. ``context_len``
    defaults to the one the dataset was built with; a longer one is refused when the window
    plus the horizon would no longer fit in the recorded purge gap. ``require_validated``
    refuses a dataset that the Great Expectations suite has not passed in its current form.
    """
    from common import paths

    check_tier(tier)
    meta = read_split_meta(symbol, tier)
    check_horizon(horizon, meta.get("horizons") or [])
    key = f"h{horizon}"
    if key not in meta["splits"]:
        raise TierHpoError(
            f"horizon {horizon} is not in {symbol}_{tier} (built for {meta['horizons']}); "
            "add it to data.horizons and rebuild the tiers"
        )
    context_len = meta["context_len"] if context_len is None else context_len
    if context_len + horizon > meta["gap"]:
        raise TierHpoError(
            f"context_len {context_len} + horizon {horizon} exceeds the purge gap {meta['gap']} of "
            f"{symbol}_{tier}; rebuild the tiers with data.context_len >= {context_len}"
        )
    if require_validated:
        ensure_validated(symbol, tier)
    path = paths.tier_path(symbol, tier)
    from training.inputs import STATIONARY_COLUMNS, input_columns

    wanted = input_columns(tier)
    if list(meta["feature_columns"]) != list(wanted):
        raise TierHpoError(
            f"{symbol}_{tier} was built with other input columns (raw price levels?); rebuild it: tierhpo tiers --tier {tier}"
        )
    columns = list(wanted if include_base else wanted[len(STATIONARY_COLUMNS):])
    label = meta["label_columns"][key]
    frame = read_tier_frame(path, columns=["date", *columns, label])
    if len(frame) != meta["n_rows"]:
        raise TierHpoError(f"{path} has {len(frame)} rows but its split file says {meta['n_rows']}; rebuild the tier")
    bounds = {s: (int(b["start"]), int(b["stop"])) for s, b in meta["splits"][key].items()}
    return TierData.from_arrays(
        frame[columns].to_numpy(dtype=np.float64),
        frame[label].to_numpy(),
        frame["date"].to_numpy().astype("datetime64[D]"),
        columns,
        context_len,
        horizon,
        bounds,
        tier=tier,
        symbol=symbol,
        breaks=tuple(int(b) for b in meta.get("breaks", [])),
    )
