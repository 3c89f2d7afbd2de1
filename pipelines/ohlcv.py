"""Reading and validating raw daily OHLCV: the library half of ``tierhpo ingest`` (not a stage).

Reading is bounded (``common.limits``): a file over ``ingest.max_input_mb`` is refused from its
size on disk before a byte is read, a CSV is read in chunks of ``CSV_CHUNK_ROWS`` rows through a
reader that stops at the byte limit (so a .csv.gz cannot expand without bound), and a parquet
file's row count and uncompressed size are checked from its footer first. The first
``SNIFF_BYTES`` are inspected before pandas sees the file: binary content, a non-UTF-8
encoding, a first line longer than that, and a ``;`` or tab delimiter each get one line.

Every bad input raises ``TierHpoError`` with one line; values are quoted through
``common.errors.shorten``.
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import limits, paths
from common.errors import TierHpoError, shorten
from training.dataset import DataConfig
from training.features import WARMUP_ROWS
from training.gaps import check_gaps
from training.splits import minimum_rows

BUNDLED = "arch"
PRICE_COLUMNS = ("open", "high", "low", "close")
REQUIRED = ("date", *PRICE_COLUMNS, "volume")
ALIASES = {"adj close": "adj_close", "adj_close": "adj_close", "adjclose": "adj_close", "adjusted close": "adj_close"}
EXPECTED_HINT = "expected Date, Open, High, Low, Close, Volume (any case; Adj Close optional)"
FLOAT_FORMAT = "%.12g"  # 12 significant digits: exact for market prices, stable across platforms
GZIP_MAGIC = b"\x1f\x8b"
# A time of day followed by a UTC offset: the offset is dropped, the local wall-clock date kept.
_TZ_SUFFIX = re.compile(r"(\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
MIB = 1 << 20


class _TooBig(Exception):
    pass


class _LineTooLong(Exception):
    pass


class _CappedReader(io.RawIOBase):
    """A binary stream that raises ``_TooBig`` once more than ``limit`` bytes have been read, and
    ``_LineTooLong`` at a line longer than ``limits.MAX_LINE_BYTES`` (pandas' tokenizer re-scans an
    unfinished line at every refill: a 50 MB single-line file ran for over 18 minutes)."""

    def __init__(self, raw, limit: int) -> None:
        self.raw, self.limit, self.seen, self.line = raw, limit, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.seen += len(data)
        if self.seen > self.limit:
            raise _TooBig
        last = data.rfind(b"\n")
        self.line = self.line + len(data) if last < 0 else len(data) - last - 1
        if self.line > limits.MAX_LINE_BYTES:
            raise _LineTooLong
        buffer[: len(data)] = data
        return len(data)


def bundled_sp500() -> pd.DataFrame:
    """The real S&P 500 daily OHLCV shipped with ``arch`` (1999-01-04 .. 2018-12-31, 5031 rows)."""
    from arch.data import sp500

    return sp500.load().reset_index()


def _too_big(path: Path, what: str, max_mb: float) -> TierHpoError:
    return TierHpoError(
        f"source {shorten(path.name)} is {what}, over the ingest limit of {max_mb:g} MiB (daily OHLCV of 100 years "
        "is ~2 MiB); if it really is daily data, raise it with --max-input-mb or ingest.max_input_mb"
    )


def _sniff(path: Path, head: bytes, more: bool) -> None:
    """Refuse, with a hint, what pandas would turn into a codec error or 'missing columns'."""
    name = shorten(path.name)
    if b"\x00" in head or head.startswith(GZIP_MAGIC):
        raise TierHpoError(f"source {name} is not a text CSV (binary content); export the prices as CSV text")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut by the sniff window
            raise TierHpoError(
                f"source {name} is not UTF-8 text: byte {head[exc.start]:#04x} at offset {exc.start} cannot be "
                f"decoded; save it as UTF-8 CSV"
            ) from None
        text = head[: exc.start].decode("utf-8")
    if "\n" not in text and "\r" not in text and more:
        raise TierHpoError(
            f"source {name}: the first line is longer than {limits.SNIFF_BYTES // 1024} KiB, so it is not a "
            f"daily OHLCV header; {EXPECTED_HINT}"
        )
    header = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    for sep, word in ((";", "semicolon"), ("\t", "tab")):
        if sep in header and "," not in header:
            raise TierHpoError(
                f"source {name} looks {word}-separated (header {shorten(header)}); save it comma-separated, "
                "e.g. pandas.read_csv(path, sep=';').to_csv(new_path, index=False)"
            )


def _read_csv(path: Path, max_bytes: int, max_rows: int) -> pd.DataFrame:
    with open(path, "rb") as fh:
        gz = fh.read(2) == GZIP_MAGIC
    if path.name.lower().endswith(".gz") and not gz:
        raise TierHpoError(f"source {shorten(path.name)} is named .gz but is not gzip-compressed")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(limits.SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        raise TierHpoError(f"could not read {shorten(path.name)}: {shorten(str(exc))}") from None
    _sniff(path, head, more=len(head) >= limits.SNIFF_BYTES)
    chunks, rows = [], 0
    with opener(path, "rb") as fh:
        reader = None
        try:
            reader = pd.read_csv(io.BufferedReader(_CappedReader(fh, max_bytes)), chunksize=limits.CSV_CHUNK_ROWS)
            for chunk in reader:
                rows += len(chunk)
                if rows > max_rows:
                    raise TierHpoError(
                        f"source {shorten(path.name)} has more than {max_rows} rows (ingest limit); if it really is "
                        "daily data, raise it with --max-rows or ingest.max_rows"
                    )
                chunks.append(chunk)
        except _TooBig:
            raise _too_big(path, f"over {max_bytes // MIB} MiB decompressed", max_bytes / MIB) from None
        except _LineTooLong:
            raise TierHpoError(f"source {shorten(path.name)} has a line longer than {limits.MAX_LINE_BYTES // 1024} KiB; "
                               "daily OHLCV has one short line per day: check the file and its line endings") from None
        except UnicodeDecodeError:  # past the sniffed head: pandas' position is within its buffer
            raise _not_utf8(path, opener) from None
        finally:
            if reader is not None:
                reader.close()
    if not chunks:
        raise TierHpoError(f"source file has no data rows: {path}")
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def _not_utf8(path: Path, opener: Any) -> TierHpoError:
    """The error for a CSV with a non-UTF-8 byte, naming that byte's offset in the (decompressed) file."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                return TierHpoError(
                    f"source {shorten(path.name)} is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset "
                    f"{at} cannot be decoded; save it as UTF-8 CSV"
                )
            offset += len(block)
    return TierHpoError(f"source {shorten(path.name)} is not UTF-8 text; save it as UTF-8 CSV")


def _read_parquet(path: Path, max_bytes: int, max_rows: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    if meta.num_rows > max_rows:
        raise TierHpoError(
            f"source {shorten(path.name)} has {meta.num_rows} rows, over the ingest limit of {max_rows}; "
            "raise it with --max-rows or ingest.max_rows"
        )
    unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if unpacked > max_bytes:
        raise _too_big(path, f"{unpacked / MIB:.0f} MiB uncompressed", max_bytes / MIB)
    return pd.read_parquet(path)


def read_source(path: str | Path, max_input_mb: float = limits.MAX_INPUT_MB, max_rows: int = limits.MAX_ROWS) -> pd.DataFrame:
    """A user's CSV (.csv, .csv.gz, .txt) or parquet file as a raw frame, memory bounded by the limits."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TierHpoError(f"source file not found: {shorten(str(path), 200)}")
    if not path.is_file():
        raise TierHpoError(f"source is not a file: {shorten(str(path), 200)}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    size = path.stat().st_size
    if size == 0:
        raise TierHpoError(f"source file is empty: {path}")
    max_bytes = int(max_input_mb * MIB)
    if size > max_bytes:  # decided from the size on disk: a 2 GB (sparse) file costs no memory
        raise _too_big(path, f"{size / MIB:.0f} MiB", max_input_mb)
    try:
        if suffixes.endswith((".parquet", ".pq")):
            frame = _read_parquet(path, max_bytes, max_rows)
        elif suffixes.endswith((".csv", ".csv.gz", ".txt")):
            frame = _read_csv(path, max_bytes, max_rows)
        else:
            raise TierHpoError(f"unsupported file type {shorten(path.name)}: use .csv, .csv.gz or .parquet")
    except pd.errors.EmptyDataError as exc:
        raise TierHpoError(f"source file is empty: {path}") from exc
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TierHpoError(f"could not read {shorten(path.name)}: {shorten(first)}") from None
    if isinstance(frame.index, pd.DatetimeIndex) or frame.index.name:
        frame = frame.reset_index()  # parquet files often keep the date as the index
    if frame.empty:
        raise TierHpoError(f"source file has no data rows: {path}")
    return frame


def parse_dates(raw: pd.Series, where: str) -> pd.Series:
    """Naive days from strings, datetimes or tz-aware datetimes; one line on anything else.

    Timezone-aware values keep their *local* calendar date: a US feed's ``-05:00`` and ``-04:00``
    rows (the two sides of a DST change) are both taken at their own wall-clock day, so mixed
    offsets never reach pandas' "Mixed timezones detected".
    """
    if raw.dtype == object or isinstance(raw.dtype, pd.StringDtype):  # pandas 3 reads text as "str"
        text = raw.astype("string").str.strip()
        stripped = text.str.replace(_TZ_SUFFIX, r"\1", regex=True)
        try:
            dates = pd.to_datetime(stripped, errors="coerce", format="mixed")
        except (ValueError, TypeError, OverflowError) as exc:
            raise TierHpoError(f"{where}: unreadable dates ({shorten(str(exc).splitlines()[0])}); use YYYY-MM-DD") from None
    else:
        try:
            dates = pd.to_datetime(raw, errors="coerce")
        except (ValueError, TypeError, OverflowError) as exc:
            raise TierHpoError(f"{where}: unreadable dates ({shorten(str(exc).splitlines()[0])}); use YYYY-MM-DD") from None
    bad = dates.isna() & raw.notna()
    if bad.any():
        i = _first(bad)
        raise TierHpoError(f"{where}: unparsable date {shorten(raw.iloc[i])} in row {i + 1}; use YYYY-MM-DD")
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)  # wall-clock time in the data's own zone
    return dates.dt.normalize().astype("datetime64[ns]")


def _rename(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    mapping: dict[str, str] = {}
    for col in frame.columns:
        key = str(col).strip().lower()
        key = ALIASES.get(key, key)
        if key in mapping.values():
            raise TierHpoError(f"{where}: column {shorten(key)} appears more than once (column names are case-insensitive)")
        mapping[col] = key
    frame = frame.rename(columns=mapping)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        hint = ""
        if len(frame.columns) == 1 and ";" in str(frame.columns[0]):
            hint = " (the header holds ';': is the file semicolon-separated? save it comma-separated)"
        raise TierHpoError(f"{where}: missing column(s) {', '.join(missing)}; {EXPECTED_HINT}{hint}")
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

    dates = parse_dates(frame["date"], where)

    out = {"date": dates}
    for col in numeric_cols:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            i = _first(bad)
            raise TierHpoError(
                f"{where}: non-numeric value {shorten(frame[col].iloc[i])} in column '{col}', row {i + 1}"
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


def check_gaps_of(df: pd.DataFrame, data: DataConfig, where: str = "source") -> list:
    """Calendar gaps longer than data.max_gap_days: refused unless data.allow_gaps (training.gaps)."""
    return check_gaps(df["date"], data.max_gap_days, data.allow_gaps, where)


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
