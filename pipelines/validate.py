"""``tierhpo validate --tier a50``: a Great Expectations 1.x suite per tier; the gate before training.

Two suites run against the tier written by ``tierhpo tiers``:

* ``table`` on the tier parquet: exact ordered column list; float dtypes for the base and
  feature columns (integer labels, datetime dates); no nulls anywhere (the warm-up rows are
  already dropped by the tier builder, so every remaining row must be complete) and no
  infinities; dates strictly increasing and unique; OHLC consistency (low <= open, close
  <= high) and prices > 0; volume >= 0; labels in {0, 1}; enough rows for the context, the
  horizons and three splits.
* ``labels`` on one row per tier date: every stored ``target_h{h}`` must equal the label
  recomputed from the raw prices in ``data/raw`` (adjusted as ``tiers.use_adjusted`` says,
  per gap-free segment), so an edited label fails here even after its md5 was re-recorded.
* ``splits`` on a small table with one row per (horizon, split), recomputed from the parquet
  and the split file: the positive rate of each split within ``validate.positive_rate_*``,
  at least ``data.min_windows_per_split`` windows per split, and purge gaps of at least
  ``max(horizons) + context_len + purge_extra`` rows.

On success ``reports/validation/{symbol}_{tier}.json`` (the DVC output that downstream stages
depend on) records the result and the md5 of the validated files. On failure the command
prints each failed expectation with a few offending rows and exits non-zero; the full JSON
result and the Great Expectations Data Docs (HTML) are under
``reports/validation/{symbol}_{tier}/`` in both cases.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from common import atomic, config, paths
from common.errors import TierHpoError
from pipelines.ohlcv import read_raw
from training.dataset import (
    DataConfig,
    check_tier,
    load_data_config,
    read_split_meta,
    read_tier_frame,
)
from training.features import BASE_COLUMNS, tier_features
from training.inputs import STATIONARY_COLUMNS, TiersConfig, adjusted
from training.labels import label_name, labels_by_segment
from training.splits import SPLITS, minimum_rows, window_ends
from training.validation_record import current_md5s, details_dir, summary_path

FLOAT_TYPES = ["float64", "float32"]
INT_TYPES = ["int8", "int16", "int32", "int64"]
DATE_TYPES = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]
FINITE = 1e12  # |feature| bound: catches ±inf, which "not null" lets through


@dataclass(frozen=True)
class ValidateConfig:
    positive_rate_min: float = 0.02  # per split and horizon, over the labels the windows see
    positive_rate_max: float = 0.98
    show_rows: int = 5  # offending rows printed per failed expectation
    data_docs: bool = True  # build Great Expectations Data Docs HTML under reports/validation/

    def __post_init__(self) -> None:
        if not 0 <= self.positive_rate_min < self.positive_rate_max <= 1:
            raise TierHpoError("validate: need 0 <= positive_rate_min < positive_rate_max <= 1")
        if self.show_rows < 1:
            raise TierHpoError("validate.show_rows: must be >= 1")


# ---- what is expected -------------------------------------------------------------------


def expected_columns(tier: str, horizons: list[int]) -> list[str]:
    return ["date", *BASE_COLUMNS, *STATIONARY_COLUMNS, *tier_features(tier), *(label_name(h) for h in horizons)]


def table_expectations(tier: str, data: DataConfig) -> list:
    from great_expectations import expectations as gxe

    features = [*STATIONARY_COLUMNS, *tier_features(tier)]
    labels = [label_name(h) for h in data.horizons]
    columns = expected_columns(tier, data.horizons)
    need = minimum_rows(data.split.as_dict(), data.gap, data.context_len, data.min_windows_per_split)
    exps: list = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=columns),
        gxe.ExpectTableRowCountToBeBetween(min_value=need),
        gxe.ExpectColumnValuesToBeInTypeList(column="date", type_list=DATE_TYPES),
        gxe.ExpectColumnValuesToBeIncreasing(column="date", strictly=True),
        gxe.ExpectColumnValuesToBeUnique(column="date"),
    ]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]
    exps += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=FLOAT_TYPES) for c in (*BASE_COLUMNS, *features)]
    exps += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True) for c in BASE_COLUMNS[:4]]
    exps += [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True)
        for a, b in (("high", "open"), ("high", "close"), ("open", "low"), ("close", "low"), ("high", "low"))
    ]
    exps.append(gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0))
    exps += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=-FINITE, max_value=FINITE) for c in features]
    for c in labels:
        exps.append(gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=INT_TYPES))
        exps.append(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]))
    return exps


def split_table(frame: pd.DataFrame, meta: dict[str, Any], data: DataConfig) -> pd.DataFrame:
    """One row per (horizon, split) from the recorded bounds and the parquet's own labels."""
    rows = []
    for h in data.horizons:
        key = f"h{h}"
        if key not in meta.get("splits", {}):
            raise TierHpoError(f"split file has no horizon {h}; rebuild the tier (tierhpo tiers)")
        prev_stop = None
        breaks = [int(b) for b in meta.get("breaks", [])]
        for split in SPLITS:
            b = meta["splits"][key][split]
            lo, hi = int(b["start"]), int(b["stop"])
            column = frame[label_name(h)] if label_name(h) in frame else pd.Series(dtype=float)  # missing: schema fails
            ends = window_ends(lo, hi, data.context_len, breaks)
            labels = column.iloc[ends[ends < len(column)]]
            rows.append({
                "horizon": h,
                "split": split,
                "start": lo,
                "stop": hi,
                "windows": len(ends),
                "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
                "gap_before": lo - prev_stop if prev_stop is not None else -1,
            })
            prev_stop = hi
    return pd.DataFrame(rows)


def label_table(frame: pd.DataFrame, raw: pd.DataFrame, data: DataConfig, use_adjusted: bool) -> pd.DataFrame:
    """Per tier date: each stored label beside the same label recomputed from ``data/raw``.

    The recomputation is the tier builder's own rule (``training.labels.labels_by_segment``
    on the adjusted raw prices, per gap-free segment); a date the raw file lacks, or a label
    that would look across a gap, recomputes as -1 and fails.
    """
    base = adjusted(raw, use_adjusted)
    fresh = labels_by_segment(base, data.horizons, data.threshold, data.max_gap_days)
    dates = pd.to_datetime(frame["date"]).to_numpy()
    fresh = fresh.reindex(dates)
    out = {"date": frame["date"].to_numpy()}
    for h in data.horizons:
        col = label_name(h)
        out[col] = frame[col].to_numpy() if col in frame else -2
        out[f"{col}_from_raw"] = fresh[col].fillna(-1).astype("int64").to_numpy()
    return pd.DataFrame(out)


def label_expectations(data: DataConfig) -> list:
    from great_expectations import expectations as gxe

    return [
        gxe.ExpectColumnPairValuesToBeEqual(column_A=label_name(h), column_B=f"{label_name(h)}_from_raw")
        for h in data.horizons
    ]


def split_expectations(data: DataConfig, cfg: ValidateConfig) -> list:
    from great_expectations import expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="positive_rate"),
        gxe.ExpectColumnValuesToBeBetween(
            column="positive_rate", min_value=cfg.positive_rate_min, max_value=cfg.positive_rate_max
        ),
        gxe.ExpectColumnValuesToBeBetween(column="windows", min_value=data.min_windows_per_split),
        gxe.ExpectColumnValuesToBeBetween(
            column="gap_before", min_value=data.gap, row_condition=Column("split") != "train"
        ),
    ]


# ---- running Great Expectations ----------------------------------------------------------


def _context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["local_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": os.fspath(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=project)


def run_suites(
    name: str, batches: dict[str, tuple[pd.DataFrame, list, list[str]]], show_rows: int, docs_dir: Path | None
) -> dict[str, Any]:
    """Validate each ``suite -> (frame, expectations, index columns)``; return JSON-ready results."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    ctx = _context(docs_dir)
    source = ctx.data_sources.add_pandas(name)
    results = {}
    for suite_name, (frame, expectations, index_cols) in batches.items():
        asset = source.add_dataframe_asset(f"{name}_{suite_name}")
        batch = asset.add_batch_definition_whole_dataframe(suite_name)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}.{suite_name}", expectations=expectations))
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}.{suite_name}", data=batch, suite=suite)
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}.{suite_name}",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs")] if docs_dir is not None else [],
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": index_cols,
                    "partial_unexpected_count": show_rows,
                },
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        (result,) = outcome.run_results.values()
        results[suite_name] = result.to_json_dict()
    return results


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and value[10:] in (" 00:00:00", "T00:00:00"):
        return value[:10]
    return str(value)


def _row(row: dict[str, Any]) -> str:
    first = [k for k in ("date", "horizon", "split") if k in row]
    return "(" + ", ".join(f"{k}={_fmt(row[k])}" for k in [*first, *(k for k in row if k not in first)]) + ")"


def describe_failures(results: dict[str, Any], show_rows: int) -> list[str]:
    """One human-readable line per failed expectation, with a few offending rows."""
    lines = []
    for suite, result in results.items():
        for item in result["results"]:
            if item["success"]:
                continue
            cfg = item["expectation_config"]
            kwargs = {k: v for k, v in cfg["kwargs"].items() if k not in ("batch_id", "result_format") and v is not None}
            args = ", ".join(f"{k}={_fmt(v)}" for k, v in kwargs.items() if not isinstance(v, list) or len(v) <= 4)
            res = item.get("result") or {}
            detail = []
            if "unexpected_count" in res:
                detail.append(f"{res['unexpected_count']} of {res.get('element_count', '?')} rows")
            if "observed_value" in res:
                observed = res["observed_value"]
                if isinstance(observed, list) and len(observed) > 8:
                    expected = kwargs.get("column_list", [])
                    extra = [c for c in observed if c not in expected]
                    missing = [c for c in expected if c not in observed]
                    observed = f"missing {missing[:show_rows]}, unexpected {extra[:show_rows]}"
                detail.append(f"observed {_fmt(observed)}")
            examples = [_row(row) for row in (res.get("partial_unexpected_index_list") or [])[:show_rows]]
            if item.get("exception_info", {}).get("raised_exception"):
                detail.append(str(item["exception_info"].get("exception_message", "")).splitlines()[0][:160])
            line = f"  FAILED [{suite}] {cfg['type']}({args}): " + "; ".join(detail)
            if examples:
                line += " e.g. " + " ".join(examples)
            lines.append(line)
    return lines


# ---- the stage ---------------------------------------------------------------------------


def validate_tier(symbol: str, tier: str, data: DataConfig, cfg: ValidateConfig) -> tuple[bool, list[str], dict]:
    check_tier(tier)
    parquet = paths.tier_path(symbol, tier)
    if not parquet.is_file():
        raise TierHpoError(f"no tier dataset at {parquet}; build it with `tierhpo tiers --tier {tier}`")
    meta = read_split_meta(symbol, tier)
    frame = read_tier_frame(parquet)
    if meta.get("n_rows") != len(frame) or meta.get("tier") != tier:
        raise TierHpoError(f"{paths.splits_path(symbol, tier).name} does not describe {parquet.name}; rebuild the tier")
    use_adjusted = config.load(TiersConfig, "tiers").use_adjusted
    batches = {
        "table": (frame, table_expectations(tier, data), ["date"]),
        "splits": (split_table(frame, meta, data), split_expectations(data, cfg), ["horizon", "split"]),
        "labels": (label_table(frame, read_raw(symbol), data, use_adjusted), label_expectations(data), ["date"]),
    }
    details = details_dir(symbol, tier)
    details.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{details.name}.", dir=details.parent))
    try:
        results = run_suites(f"{symbol}_{tier}", batches, cfg.show_rows, staging / "data_docs" if cfg.data_docs else None)
        success = all(r["success"] for r in results.values())
        atomic.write_json(staging / "result.json", {"success": success, "suites": results})
        shutil.rmtree(details, ignore_errors=True)
        os.replace(staging, details)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats = {s: r["statistics"] for s, r in results.items()}
    summary = {
        "success": success,
        "symbol": symbol,
        "tier": tier,
        "dataset": str(parquet.relative_to(paths.project_root())),
        **current_md5s(symbol, tier),
        "n_rows": len(frame),
        "n_columns": frame.shape[1],
        "expectations": {s: {k: st[k] for k in ("evaluated_expectations", "successful_expectations")} for s, st in stats.items()},
        "positive_rate": {
            f"h{h}": {s: round(float(r), 6) for s, r in zip(g["split"], g["positive_rate"], strict=True)}
            for h, g in split_table(frame, meta, data).groupby("horizon")
        },
    }
    return success, describe_failures(results, cfg.show_rows), summary


app = typer.Typer(add_completion=False)


@app.command()
def main(
    tier: Annotated[str, typer.Option(help="Feature tier: a20, a50 or a100.")],
    symbol: Annotated[str | None, typer.Option(help="Symbol; default data.symbol")] = None,
) -> None:
    """Validate a tier dataset with Great Expectations (non-zero exit on failure)."""
    data = load_data_config(symbol=symbol)
    check_tier(tier, data.tiers)
    cfg = config.load(ValidateConfig, "validate")
    out = summary_path(data.symbol, tier)
    success, failures, summary = validate_tier(data.symbol, tier, data, cfg)
    details = details_dir(data.symbol, tier).relative_to(paths.project_root())
    n_eval = sum(s["evaluated_expectations"] for s in summary["expectations"].values())
    if not success:
        out.unlink(missing_ok=True)  # a stale success record must not let downstream stages run
        print(f"validate: {data.symbol}_{tier}: {len(failures)} of {n_eval} expectations failed:", file=sys.stderr)
        for line in failures:
            print(line, file=sys.stderr)
        raise TierHpoError(
            f"{data.symbol}_{tier} failed validation; full result in {details}/result.json"
            + (f" and {details}/data_docs/index.html" if cfg.data_docs else "")
        )
    atomic.write_json(out, summary)
    typer.echo(f"validate: {data.symbol}_{tier}: all {n_eval} expectations passed ({summary['n_rows']} rows) -> {out.relative_to(paths.project_root())}")

