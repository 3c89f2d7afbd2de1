"""The baselines stage's record: its model names, metrics.json and predictions.parquet, one reader.

Writer: ``tierhpo baselines`` (pipelines/baselines.py), into ``paths.baselines_dir(tier, h)``.
Readers: promote, select and the report, through the functions here, so the list of baselines and
the file layout live in one place.

* ``metrics.json``: ``{name: {"val/auc": ..., "test/auc": ..., ...}}`` for every name in ``NAMES``;
* ``predictions.parquet``: ``date, split, y`` and one probability column per name, every window.
"""

from __future__ import annotations

import json
from typing import Any

from common import paths
from common.errors import TierHpoError

NAMES = ("vol", "logreg", "hgb")
VOL_FEATURE = "parkinson_5"  # the single feature of the ``vol`` baseline (present in every tier)


def _hint(tier: str, horizon: int) -> str:
    return f"run: tierhpo baselines --tier {tier} --horizon {horizon}"


def read_metrics(tier: str, horizon: int) -> dict[str, dict[str, float]]:
    """``{name: {metric: value}}`` of every baseline; missing or stale files are one-line errors."""
    path = paths.baselines_dir(tier, horizon) / "metrics.json"
    if not path.is_file():
        raise TierHpoError(f"no baseline metrics at {path}; {_hint(tier, horizon)}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TierHpoError(f"{path} is not valid JSON ({exc.msg}); {_hint(tier, horizon)}") from None
    missing = [b for b in NAMES if "val/auc" not in (raw.get(b) or {})]
    if missing:
        raise TierHpoError(f"{path} lacks val/auc of {missing}; {_hint(tier, horizon)}")
    return {b: {k: float(v) for k, v in raw[b].items() if isinstance(v, (int, float))} for b in NAMES}


def read_predictions(tier: str, horizon: int) -> Any:
    """The predictions frame (``date, split, y, <names>``), checked for every column."""
    import pandas as pd

    path = paths.baselines_dir(tier, horizon) / "predictions.parquet"
    if not path.is_file():
        raise TierHpoError(f"no baseline predictions at {path}; {_hint(tier, horizon)}")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TierHpoError(f"{path} cannot be read ({str(exc).splitlines()[0]}); {_hint(tier, horizon)}") from None
    lacking = [c for c in ("date", "split", "y", *NAMES) if c not in frame.columns]
    if lacking:
        raise TierHpoError(f"{path} lacks column(s) {lacking}; {_hint(tier, horizon)}")
    return frame
