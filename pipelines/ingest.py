"""``tierhpo ingest``: validate daily OHLCV into ``data/raw/`` and track it with ``data.dvc``.

* ``tierhpo ingest`` reads the bundled S&P 500 (``arch.data.sp500.load()``, no network), or
  the ``ingest.source`` of params.yaml; ``--source FILE`` reads a user's CSV or parquet file.
  The file is validated, written to ``data/raw/{symbol}.csv`` in a fixed text format (so the
  same data always gives the same bytes and the same DVC hash), and ``data.dvc`` is updated:
  new data is one git commit of ``data.dvc``.
* ``tierhpo ingest --ensure`` is what ``make repro`` runs before ``dvc repro``. If
  ``data/raw`` matches ``data.dvc`` it only makes sure the DVC cache holds it; if it is
  missing it restores it from the cache, or regenerates the bundled data and checks the hash
  against ``data.dvc``. A mismatch is an error: nothing is ever re-tracked silently.

Every bad input raises ``TierHpoError`` with one line; a failed run leaves ``data/raw`` and
``data.dvc`` as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from common import config, paths
from common.errors import TierHpoError
from training.dataset import DataConfig, load_data_config
from training.features import WARMUP_ROWS
from training.splits import minimum_rows

BUNDLED = "arch"
PRICE_COLUMNS = ("open", "high", "low", "close")
REQUIRED = ("date", *PRICE_COLUMNS, "volume")
ALIASES = {"adj close": "adj_close", "adj_close": "adj_close", "adjclose": "adj_close", "adjusted close": "adj_close"}
EXPECTED_HINT = "expected Date, Open, High, Low, Close, Volume (any case; Adj Close optional)"
FLOAT_FORMAT = "%.12g"  # 12 significant digits: exact for market prices, stable across platforms


@dataclass(frozen=True)
class IngestConfig:
    source: str = BUNDLED  # "arch" = the bundled S&P 500, or a path to a CSV / parquet file

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise TierHpoError("ingest.source: give 'arch' or a path to a CSV/parquet file")


# ---- reading and validating -------------------------------------------------------------


def bundled_sp500() -> pd.DataFrame:
    """The real S&P 500 daily OHLCV shipped with ``arch`` (1999-01-04 .. 2018-12-31, 5031 rows)."""
    from arch.data import sp500

    return sp500.load().reset_index()


def read_source(path: str | Path) -> pd.DataFrame:
    path = Path(path).expanduser()
    if not path.exists():
        raise TierHpoError(f"source file not found: {path}")
    if not path.is_file():
        raise TierHpoError(f"source is not a file: {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.stat().st_size == 0:
        raise TierHpoError(f"source file is empty: {path}")
    try:
        if suffixes.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".csv", ".csv.gz", ".txt")):
            frame = pd.read_csv(path)
        else:
            raise TierHpoError(f"unsupported file type {path.name!r}: use .csv, .csv.gz or .parquet")
    except pd.errors.EmptyDataError as exc:
        raise TierHpoError(f"source file is empty: {path}") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TierHpoError(f"could not read {path}: {first}") from exc
    if isinstance(frame.index, pd.DatetimeIndex) or frame.index.name:
        frame = frame.reset_index()  # parquet files often keep the date as the index
    if frame.empty:
        raise TierHpoError(f"source file has no data rows: {path}")
    return frame


def _rename(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    mapping: dict[str, str] = {}
    for col in frame.columns:
        key = str(col).strip().lower()
        key = ALIASES.get(key, key)
        if key in mapping.values():
            raise TierHpoError(f"{where}: column {key!r} appears more than once (column names are case-insensitive)")
        mapping[col] = key
    frame = frame.rename(columns=mapping)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise TierHpoError(f"{where}: missing column(s) {', '.join(missing)}; {EXPECTED_HINT}")
    keep = [*REQUIRED[:-1], *(["adj_close"] if "adj_close" in frame.columns else []), "volume"]
    return frame[keep]


def _first(mask: np.ndarray | pd.Series) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _day(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def canonical_ohlcv(frame: pd.DataFrame, where: str = "source") -> pd.DataFrame:
    """Validate raw OHLCV and return it as ``date, open, high, low, close[, adj_close], volume``.

    ``date`` is a naive day (datetime64), every other column float64. Raises TierHpoError
    naming the first offending row on any problem.
    """
    if frame.empty:
        raise TierHpoError(f"{where}: no data rows")
    frame = _rename(frame, where).reset_index(drop=True)
    numeric_cols = [c for c in frame.columns if c != "date"]

    raw_dates = frame["date"]
    dates = pd.to_datetime(raw_dates, errors="coerce", format="mixed") if raw_dates.dtype == object else (
        pd.to_datetime(raw_dates, errors="coerce")
    )
    bad = dates.isna() & raw_dates.notna()
    if bad.any():
        i = _first(bad)
        raise TierHpoError(f"{where}: unparsable date {raw_dates.iloc[i]!r} in row {i + 1}; use YYYY-MM-DD")
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    dates = dates.dt.normalize()

    out = {"date": dates}
    for col in numeric_cols:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            i = _first(bad)
            raise TierHpoError(
                f"{where}: non-numeric value {frame[col].iloc[i]!r} in column '{col}', row {i + 1}"
                f" ({_day(dates.iloc[i]) if pd.notna(dates.iloc[i]) else 'no date'})"
            )
        out[col] = values.astype(np.float64)
    df = pd.DataFrame(out)

    missing = df.isna() | np.isinf(df[numeric_cols]).reindex(columns=df.columns, fill_value=False)
    if missing.any(axis=None):
        rows = missing.any(axis=1)
        i = _first(rows)
        cols = [c for c in df.columns if missing.iloc[i][c]]
        when = _day(df["date"].iloc[i]) if pd.notna(df["date"].iloc[i]) else "no date"
        raise TierHpoError(
            f"{where}: {int(rows.sum())} row(s) with missing or infinite values, first row {i + 1} ({when}, "
            f"column(s) {', '.join(cols)}); drop or fill them before ingesting"
        )
    dup = df["date"].duplicated(keep=False)
    if dup.any():
        i = _first(dup)
        raise TierHpoError(
            f"{where}: duplicated date {_day(df['date'].iloc[i])} ({int(dup.sum())} rows share a date); "
            "each trading day must appear once"
        )
    step = df["date"].diff()
    unsorted = step < pd.Timedelta(0)
    if unsorted.any():
        i = _first(unsorted)
        raise TierHpoError(
            f"{where}: dates are not sorted: {_day(df['date'].iloc[i])} (row {i + 1}) comes after "
            f"{_day(df['date'].iloc[i - 1])}; sort the file by date"
        )
    prices = df[[c for c in numeric_cols if c != "volume"]]
    nonpos = prices <= 0
    if nonpos.any(axis=None):
        i = _first(nonpos.any(axis=1))
        col = next(c for c in prices.columns if nonpos.iloc[i][c])
        raise TierHpoError(
            f"{where}: non-positive price {prices[col].iloc[i]:g} in column '{col}' on {_day(df['date'].iloc[i])}; "
            "prices must be > 0"
        )
    high_low = df["high"] < df["low"]
    if high_low.any():
        i = _first(high_low)
        raise TierHpoError(
            f"{where}: high < low on {int(high_low.sum())} day(s), first {_day(df['date'].iloc[i])} "
            f"(high {df['high'].iloc[i]:g}, low {df['low'].iloc[i]:g})"
        )
    outside = (df[["open", "close"]].max(axis=1) > df["high"]) | (df[["open", "close"]].min(axis=1) < df["low"])
    if outside.any():
        i = _first(outside)
        row = df.iloc[i]
        raise TierHpoError(
            f"{where}: open/close outside [low, high] on {int(outside.sum())} day(s), first {_day(row['date'])} "
            f"(open {row['open']:g}, high {row['high']:g}, low {row['low']:g}, close {row['close']:g})"
        )
    negative = df["volume"] < 0
    if negative.any():
        i = _first(negative)
        raise TierHpoError(f"{where}: negative volume {df['volume'].iloc[i]:g} on {_day(df['date'].iloc[i])}")
    return df


def required_rows(data: DataConfig) -> int:
    """Raw rows needed for the feature warm-up, the label horizon and three usable splits."""
    split_rows = minimum_rows(data.split.as_dict(), data.gap, data.context_len, data.min_windows_per_split)
    return WARMUP_ROWS + max(data.horizons) + split_rows


def check_length(df: pd.DataFrame, data: DataConfig, where: str = "source") -> None:
    need = required_rows(data)
    if len(df) < need:
        raise TierHpoError(
            f"{where}: only {len(df)} rows, need at least {need} (feature warm-up {WARMUP_ROWS}, "
            f"horizon {max(data.horizons)}, 3 splits of {data.min_windows_per_split}+ windows of "
            f"{data.context_len} days with purge gaps of {data.gap}); use a longer history"
        )


def render_csv(df: pd.DataFrame) -> bytes:
    """The canonical raw file: fixed column order, ISO dates, 12 significant digits, LF endings."""
    return df.to_csv(index=False, float_format=FLOAT_FORMAT, date_format="%Y-%m-%d", lineterminator="\n").encode()


def read_raw(symbol: str) -> pd.DataFrame:
    """``data/raw/{symbol}.csv`` as validated OHLCV (what ``tierhpo tiers`` reads)."""
    path = paths.raw_dir() / f"{symbol}.csv"
    if not path.is_file():
        raise TierHpoError(
            f"no raw data for {symbol} at {path}; run `tierhpo ingest` (or `tierhpo ingest --ensure`)"
        )
    return canonical_ohlcv(pd.read_csv(path), where=str(path.relative_to(paths.project_root())))


# ---- DVC --------------------------------------------------------------------------------


def dir_md5(path: str | Path) -> str:
    """The hash DVC records for a directory (``<md5>.dir``), computed with DVC's own dvc-data."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), os.fspath(path), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


def tracked_md5(dvc_file: Path) -> str | None:
    import yaml

    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
        (out,) = [o for o in outs if o.get("path") == "data/raw"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise TierHpoError(f"{dvc_file} is not a DVC file tracking data/raw; restore it from git") from exc
    return out.get("md5")


def _repo():
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(os.fspath(paths.project_root()))
    except NotDvcRepoError as exc:
        raise TierHpoError(f"{paths.project_root()} is not a DVC repository; run `dvc init` first") from exc


@contextmanager
def _locked(repo) -> Iterator[None]:
    """Hold DVC's repository lock, so a concurrent `dvc repro` never sees half-swapped data."""
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    try:
        with lock_repo(repo):
            yield
    except LockError as exc:
        raise TierHpoError("the DVC repository is locked (is `dvc repro` running?); retry when it ends") from exc


def _cached(repo) -> bool:
    status = repo.status(targets=[os.fspath(_dvc_file())])
    return not status


def _dvc_file() -> Path:
    return paths.project_root() / "data.dvc"


def _replace_and_track(staged: Path) -> str:
    """Swap ``staged`` in as data/raw and record it in data.dvc; roll back if DVC fails."""
    raw, dvc_file = paths.raw_dir(), _dvc_file()
    repo = _repo()
    with _locked(repo):
        old_dvc = dvc_file.read_bytes() if dvc_file.exists() else None
        if old_dvc is None:
            # DVC 3 has no `dvc add --file`: a stub naming data/raw lets `add` update it in place.
            dvc_file.write_text("outs:\n- path: data/raw\n")
        backup = raw.with_name(".raw.previous")
        shutil.rmtree(backup, ignore_errors=True)
        if raw.exists():
            os.replace(raw, backup)
        os.replace(staged, raw)
        try:
            repo.add(os.fspath(raw))  # absolute: DVC resolves relative paths from the cwd
        except Exception:
            shutil.rmtree(raw, ignore_errors=True)
            if backup.exists():
                os.replace(backup, raw)
            if old_dvc is None:
                dvc_file.unlink(missing_ok=True)
            else:
                dvc_file.write_bytes(old_dvc)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    return str(tracked_md5(dvc_file))


# ---- the two modes -----------------------------------------------------------------------


def load_and_validate(source: str, data: DataConfig) -> tuple[pd.DataFrame, str]:
    if source == BUNDLED:
        frame, where = bundled_sp500(), "bundled S&P 500 (arch.data.sp500)"
    else:
        frame, where = read_source(source), str(source)
    df = canonical_ohlcv(frame, where)
    check_length(df, data, where)
    return df, where


def stage_raw(df: pd.DataFrame, symbol: str, keep_others: bool, workdir: Path) -> Path:
    """Build the new data/raw in ``workdir``: ``{symbol}.csv`` (+ the other symbols' files)."""
    staged = workdir / "raw"
    staged.mkdir()
    raw = paths.raw_dir()
    if keep_others and raw.is_dir():
        for item in raw.iterdir():
            if item.is_file() and item.name != f"{symbol}.csv":
                shutil.copy2(item, staged / item.name)
    (staged / f"{symbol}.csv").write_bytes(render_csv(df))
    return staged


def ingest(source: str, symbol: str, data: DataConfig) -> str:
    df, where = load_and_validate(source, data)
    raw = paths.raw_dir()
    raw.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ingest.", dir=raw.parent) as tmp:
        staged = stage_raw(df, symbol, keep_others=True, workdir=Path(tmp))
        new_md5 = dir_md5(staged)
        dvc_file = _dvc_file()
        if dvc_file.exists() and raw.is_dir() and tracked_md5(dvc_file) == new_md5 == dir_md5(raw):
            repo = _repo()
            with _locked(repo):
                if not _cached(repo):
                    repo.commit(os.fspath(_dvc_file()), force=True)
            md5 = new_md5
            verb = "unchanged"
        else:
            md5 = _replace_and_track(staged)
            verb = "tracked"
    first, last = _day(df["date"].iloc[0]), _day(df["date"].iloc[-1])
    typer.echo(f"ingest: {where}: {len(df)} rows {first}..{last} -> data/raw/{symbol}.csv; data.dvc {verb} ({md5})")
    if verb == "tracked":
        typer.echo("ingest: commit it with `git add data.dvc data/.gitignore && git commit -m 'data: ...'`")
    if symbol != data.symbol:
        typer.echo(f"ingest: note: params.yaml data.symbol is {data.symbol!r}; set it to {symbol!r} to build tiers from it")
    return md5


def _restore_from_cache(repo, expected: str) -> bool:
    from dvc.exceptions import DvcException

    if not repo.cache.local.exists(expected):
        return False
    try:
        repo.checkout(targets=[os.fspath(_dvc_file())])
    except DvcException:
        return False  # the cache holds the directory listing but not every file
    raw = paths.raw_dir()
    if raw.exists() and dir_md5(raw) == expected:
        return True
    shutil.rmtree(raw, ignore_errors=True)
    return False


def ensure(data: DataConfig) -> str:
    """Make data/raw match data.dvc and sit in the DVC cache; never re-track anything."""
    dvc_file, raw = _dvc_file(), paths.raw_dir()
    if not dvc_file.exists():
        typer.echo("ingest --ensure: no data.dvc yet; ingesting the bundled S&P 500")
        return ingest(BUNDLED, data.symbol, data)
    expected = tracked_md5(dvc_file)
    if not expected:
        raise TierHpoError("data.dvc records no hash for data/raw; run `tierhpo ingest` to track the data")
    repo = _repo()
    with _locked(repo):
        if raw.exists():
            actual = dir_md5(raw)
            if actual != expected:
                raise TierHpoError(
                    f"data/raw ({actual}) differs from data.dvc ({expected}): restore it with "
                    "`dvc checkout data.dvc`, or track the new data with `tierhpo ingest --source FILE`"
                )
            if not _cached(repo):
                repo.commit(os.fspath(_dvc_file()), force=True)
                typer.echo(f"ingest --ensure: data/raw matches data.dvc ({expected}); saved it to the DVC cache")
            else:
                typer.echo(f"ingest --ensure: data/raw matches data.dvc ({expected})")
            return expected
        if _restore_from_cache(repo, expected):
            typer.echo(f"ingest --ensure: restored data/raw from the DVC cache ({expected})")
            return expected
        df, _ = load_and_validate(BUNDLED, data)
        raw.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".ingest.", dir=raw.parent) as tmp:
            staged = stage_raw(df, data.symbol, keep_others=False, workdir=Path(tmp))
            regenerated = dir_md5(staged)
            if regenerated != expected:
                raise TierHpoError(
                    f"data/raw is missing and data.dvc ({expected}) is not the bundled S&P 500 as {data.symbol} "
                    f"({regenerated}): fetch it with `dvc pull` from your remote, or re-ingest with `tierhpo ingest`"
                )
            os.replace(staged, raw)
        repo.commit(os.fspath(_dvc_file()), force=True)
    typer.echo(f"ingest --ensure: regenerated data/raw from the bundled S&P 500; hash matches data.dvc ({expected})")
    return expected


app = typer.Typer(add_completion=False)


@app.command()
def main(
    source: Annotated[
        str | None, typer.Option(help="CSV or parquet with Date, Open, High, Low, Close, Volume; default ingest.source")
    ] = None,
    symbol: Annotated[str | None, typer.Option(help="Symbol to store it as; default data.symbol")] = None,
    ensure_data: Annotated[
        bool,
        typer.Option("--ensure", help="Restore or regenerate data/raw so it matches data.dvc (used by `make repro`)."),
    ] = False,
) -> None:
    """Validate raw OHLCV (default: the bundled S&P 500) into data/raw/ and track it with data.dvc."""
    data = load_data_config()
    if ensure_data:
        if source is not None or symbol is not None:
            raise TierHpoError("--ensure restores the data tracked by data.dvc and takes no --source or --symbol")
        ensure(data)
        return
    cfg = config.load(IngestConfig, "ingest", source=source)
    target = replace(data, symbol=symbol) if symbol else data  # re-runs the symbol check
    ingest(cfg.source, target.symbol, data)
