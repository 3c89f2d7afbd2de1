"""``tierhpo tiers --tier a50``: one feature tier dataset with labels and purged splits.

Reads ``data/raw/{symbol}.csv`` and writes, atomically:

* ``paths.tier_path(symbol, tier)`` (parquet): ``date``, the 5 raw OHLCV base columns, their 5
  stationary forms (``training.inputs``), the tier's engineered features (float64) and
  ``target_h{h}`` (int8, 0/1) for every horizon; the model sees only ``input_columns(tier)``;
* ``paths.splits_path(symbol, tier)`` (JSON, also embedded in the parquet's schema metadata
  under ``tierhpo``): the split boundaries per horizon (row ranges and dates), the purge gap,
  the warm-up, the column lists and per-split positive rates.

Every tier drops the same leading warm-up rows (the largest lookback of all 100 features)
and the trailing rows whose label would look past the end, so a20, a50 and a100 share rows,
dates and splits and differ only in their feature columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from common import atomic, config, paths
from common.errors import TierHpoError
from pipelines.ohlcv import read_raw
from training.dataset import DataConfig, check_tier, load_data_config
from training.features import BASE_COLUMNS, WARMUP_ROWS, compute_features, tier_features
from training.gaps import check_gaps, segment_ids
from training.inputs import STATIONARY_COLUMNS, TiersConfig, adjusted, input_columns, stationary_base
from training.labels import label_name, make_labels
from training.splits import SPLITS, check_bounds, split_bounds, window_ends

META_KEY = b"tierhpo"


def _segment_frame(base: pd.DataFrame, engineered: list[str], data: DataConfig) -> pd.DataFrame:
    """Base, stationary inputs, features and labels of one gap-free segment, warm-up and tail cut."""
    base = base.reset_index(drop=True)
    feats = compute_features(base)[engineered]
    labels = make_labels(base["high"], base["close"], data.horizons, data.threshold)
    frame = pd.concat([base, stationary_base(base), feats, labels], axis=1)
    return frame.iloc[WARMUP_ROWS : max(len(frame) - max(data.horizons), WARMUP_ROWS)]


def build_tier(
    ohlcv: pd.DataFrame, tier: str, data: DataConfig, cfg: TiersConfig, symbol: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pure: validated raw OHLCV -> (tier frame, split metadata).

    Calendar gaps longer than ``data.max_gap_days`` are refused, or, with ``data.allow_gaps``,
    cut the data into segments that are built separately (``training.gaps``): no feature,
    window or label spans a gap. ``meta["breaks"]`` holds the rows that start a new segment.
    """
    check_tier(tier)
    base = adjusted(ohlcv, cfg.use_adjusted).reset_index(drop=True)
    gaps = check_gaps(base["date"], data.max_gap_days, data.allow_gaps, f"{symbol} raw data")
    engineered = list(tier_features(tier))
    segments = segment_ids(base["date"], data.max_gap_days)
    parts = [_segment_frame(part, engineered, data) for _, part in base.groupby(segments, sort=True)]
    breaks, row = [], 0
    for part in parts:
        if len(part) and row:
            breaks.append(row)
        row += len(part)
    frame = pd.concat(parts, ignore_index=True)
    label_cols = [label_name(h) for h in data.horizons]
    if frame[label_cols].isna().any(axis=None):  # cannot happen after the tail cut; guards the invariant
        raise TierHpoError(f"{symbol}_{tier}: unlabelled rows remain after dropping the last {max(data.horizons)}")
    frame[label_cols] = frame[label_cols].astype(np.int8)
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")

    n = len(frame)
    bounds = split_bounds(n, data.split.as_dict(), data.gap)
    check_bounds(bounds, data.context_len, data.min_windows_per_split, breaks)
    dates = frame["date"].dt.strftime("%Y-%m-%d")
    splits: dict[str, Any] = {}
    for h, col in zip(data.horizons, label_cols, strict=True):
        per_split = {}
        for split in SPLITS:
            lo, hi = bounds[split]
            ends = window_ends(lo, hi, data.context_len, breaks)  # the last day of each complete window
            per_split[split] = {
                "start": lo,
                "stop": hi,
                "first_date": dates.iloc[lo],
                "last_date": dates.iloc[hi - 1],
                "rows": hi - lo,
                "windows": len(ends),
                "positive_rate": round(float(frame[col].iloc[ends].mean()), 6),
            }
        splits[f"h{h}"] = per_split
    meta = {
        "symbol": symbol,
        "tier": tier,
        "n_rows": n,
        "first_date": dates.iloc[0],
        "last_date": dates.iloc[-1],
        "warmup_rows": WARMUP_ROWS,
        "horizons": list(data.horizons),
        "threshold": data.threshold,
        "context_len": data.context_len,
        "gap": data.gap,
        "fractions": data.split.as_dict(),
        "base_columns": list(BASE_COLUMNS),
        "stationary_columns": list(STATIONARY_COLUMNS),
        "engineered_columns": engineered,
        "feature_columns": list(input_columns(tier)),  # what the model and the baselines see
        "max_gap_days": data.max_gap_days,
        "allow_gaps": data.allow_gaps,
        "gaps": [{"before": f"{g.before:%Y-%m-%d}", "after": f"{g.after:%Y-%m-%d}", "days": g.days} for g in gaps],
        "breaks": breaks,
        "label_columns": {f"h{h}": col for h, col in zip(data.horizons, label_cols, strict=True)},
        "splits": splits,
    }
    return frame, meta


def write_tier(frame: pd.DataFrame, meta: dict[str, Any], parquet: Path, sidecar: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema_meta = {**(table.schema.metadata or {}), META_KEY: json.dumps(meta, sort_keys=True).encode()}
    table = table.replace_schema_metadata(schema_meta)
    atomic.write_with(parquet, lambda tmp: pq.write_table(table, tmp))
    atomic.write_json(sidecar, meta)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    tier: Annotated[str, typer.Option(help="Feature tier: a20, a50 or a100.")],
    symbol: Annotated[str | None, typer.Option(help="Symbol in data/raw; default data.symbol")] = None,
) -> None:
    """Build a feature tier dataset (a20/a50/a100) with labels and purged splits."""
    data = load_data_config(symbol=symbol)
    check_tier(tier, data.tiers)
    cfg = config.load(TiersConfig, "tiers")
    frame, meta = build_tier(read_raw(data.symbol), tier, data, cfg, data.symbol)
    parquet, sidecar = paths.tier_path(data.symbol, tier), paths.splits_path(data.symbol, tier)
    write_tier(frame, meta, parquet, sidecar)
    rates = ", ".join(
        f"h{h} " + "/".join(f"{meta['splits'][f'h{h}'][s]['positive_rate']:.2f}" for s in SPLITS) for h in data.horizons
    )
    typer.echo(
        f"tiers: {parquet.relative_to(paths.project_root())}: {meta['n_rows']} rows {meta['first_date']}..{meta['last_date']}, "
        f"{len(meta['feature_columns'])} feature columns, gap {meta['gap']}; positive rate train/val/test: {rates}"
    )
