"""Model selection on per-day losses with the field's anchors, both from ``arch.bootstrap``.

* ``mcs_set``: Hansen, Lunde & Nason (2011) Model Confidence Set (``arch.bootstrap.MCS``,
  range statistic ``"R"``): the models that cannot be told apart from the best at level ``alpha``.
* ``spa_pvalue``: Hansen (2005) test for Superior Predictive Ability (``arch.bootstrap.SPA``):
  H0 "no model beats the benchmark", accounting for every model tried; the *consistent* p-value.

Losses are lower-is-better, one row per day in time order; ``block`` is the stationary
bootstrap's mean block length (pass a ``Comparison``'s ``block_length`` to share it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from arch.bootstrap import MCS, SPA


def _check(losses: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(losses)
    if frame.empty or not np.isfinite(frame.to_numpy(dtype=np.float64)).all():
        raise ValueError("losses must be a non-empty, finite (days x models) frame")
    return frame


def mcs_set(losses: pd.DataFrame, alpha: float = 0.05, block: int = 1, reps: int = 1000, seed: int = 0) -> list[str]:
    """Columns of ``losses`` in the ``1 - alpha`` model confidence set, in column order."""
    frame = _check(losses)
    if frame.shape[1] == 1:
        return [str(frame.columns[0])]
    mcs = MCS(frame, size=alpha, reps=reps, block_size=int(block), method="R", bootstrap="stationary", seed=seed)
    mcs.compute()
    kept = {str(c) for c in mcs.included}
    return [str(c) for c in frame.columns if str(c) in kept]


def spa_pvalue(benchmark_losses: np.ndarray | pd.Series, model_losses: pd.DataFrame, block: int = 1,
               reps: int = 1000, seed: int = 0) -> float:
    """Consistent SPA p-value of H0 "no column of ``model_losses`` has lower expected loss than the benchmark"."""
    frame = _check(model_losses)
    bench = np.asarray(benchmark_losses, dtype=np.float64).ravel()
    if len(bench) != len(frame) or not np.isfinite(bench).all():
        raise ValueError(f"benchmark losses ({len(bench)},) must be finite and match the {len(frame)} model days")
    spa = SPA(bench, frame.to_numpy(dtype=np.float64), block_size=int(block), reps=reps, bootstrap="stationary",
              studentize=True, seed=seed)
    spa.compute()
    return float(spa.pvalues["consistent"])
