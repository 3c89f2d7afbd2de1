"""Every hard limit of tierhpo, in one place (``docs/limits.md`` is the user-facing table).

Each limit has a default here and a documented way for the user to raise it explicitly;
nothing is raised silently. Sections belong to the stage that enforces them.
"""

from __future__ import annotations

import os

# ---- error messages ------------------------------------------------------------------------
# Any value quoted in an error message is cut to this many characters (common.errors.shorten).
# Raise with the environment variable TIERHPO_MAX_VALUE_CHARS.
MAX_VALUE_CHARS = 80
MAX_VALUE_CHARS_ENV = "TIERHPO_MAX_VALUE_CHARS"

# ---- ingest --------------------------------------------------------------------------------
# Largest source file `tierhpo ingest` reads, in MiB (on disk; for .csv.gz also decompressed).
# Daily OHLCV of 100 years is ~2 MiB. Raise with `--max-input-mb N` or `ingest.max_input_mb`.
MAX_INPUT_MB = 64
# Largest number of data rows ingest accepts (~4000 years of trading days).
# Raise with `--max-rows N` or `ingest.max_rows`.
MAX_ROWS = 1_000_000
# Rows per chunk when reading a CSV: peak memory is one chunk plus the parsed columns so far.
CSV_CHUNK_ROWS = 100_000
# Bytes sniffed at the start of a source file (binary content, delimiter, header length).
SNIFF_BYTES = 64 * 1024
MAX_LINE_BYTES = 64 * 1024  # a CSV line longer than this is refused (pipelines/ohlcv.py)
# Longest symbol: it becomes a file name (data/raw/<symbol>.csv, data/tiers/<symbol>_a100.splits.json).
# Fixed, not raisable: file systems cap a name at 255 bytes.
MAX_SYMBOL_CHARS = 32

# ---- data ----------------------------------------------------------------------------------
# Longest calendar gap between consecutive rows before ingest and tiers refuse the data
# (10 trading days ~ 14 calendar days). Raise with `data.max_gap_days`, or keep the gaps and
# drop what spans them with `data.allow_gaps: true`.
MAX_GAP_DAYS = 14

# ---- serving -------------------------------------------------------------------------------
# A served window whose largest |z| (train-split standardisation) exceeds this is flagged
# `outside_training_range` (the probability is still returned). 12: the default a50 tier's own
# training windows reach 12.2, its test windows 11.9, raw prices of another market 34. Set per model in the
# serving spec (`z_limit`).
SERVING_Z_LIMIT = 12.0


def max_value_chars() -> int:
    """MAX_VALUE_CHARS, or the user's explicit TIERHPO_MAX_VALUE_CHARS (an integer >= 10)."""
    raw = os.environ.get(MAX_VALUE_CHARS_ENV, "").strip()
    if raw.isdigit() and int(raw) >= 10:
        return int(raw)
    return MAX_VALUE_CHARS
