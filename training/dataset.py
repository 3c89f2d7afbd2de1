"""One tier at one horizon as training-ready arrays: standardised features, labels, purged splits.

A sample is the window of ``context_len`` consecutive days ending at day ``t``; its label is
``target_h{h}`` at day ``t``. ``split_ends[split]`` holds every ``t`` whose whole window lies
inside that split's row range, so no input window crosses a split boundary, and the purge gap
recorded with the dataset keeps label windows apart too.

Features are standardised with the *training split's* mean and std (global standardisation,
not per-window: per-window scaling would erase the volatility level, the main signal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")


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
    ) -> TierData:
        """Build from raw (unscaled) rows; ``bounds[split] = (start, stop)`` are half-open row ranges."""
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
            first_end = lo + context_len - 1
            split_ends[split] = np.arange(first_end, hi, dtype=np.int64)
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
