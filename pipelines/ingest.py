"""``tierhpo ingest``: validate daily OHLCV into ``data/raw/`` and track it with ``data.dvc``.

* ``tierhpo ingest`` reads the bundled S&P 500 (``arch.data.sp500.load()``, no network), or
  the ``ingest.source`` of params.yaml; ``--source FILE`` reads a user's CSV or parquet file.
  The file is validated (``pipelines.ohlcv``: bounded reading, one-line errors), written to
  ``data/raw/{symbol}.csv`` in a fixed text format (so the same data always gives the same
  bytes and the same DVC hash), and ``data.dvc`` is updated (``pipelines.dvc_data``): new data
  is one git commit of ``data.dvc``.
* ``tierhpo ingest --ensure`` is what ``make repro`` runs before ``dvc repro``. If
  ``data/raw`` matches ``data.dvc`` it only makes sure the DVC cache holds it; if it is
  missing it restores it from the cache, or regenerates the bundled data and checks the hash
  against ``data.dvc``. A mismatch is an error: nothing is ever re-tracked silently.

Limits (``common.limits``, ``docs/limits.md``): ``--max-input-mb`` / ``ingest.max_input_mb``,
``--max-rows`` / ``ingest.max_rows``; calendar gaps over ``data.max_gap_days`` are refused
unless ``data.allow_gaps``. Every bad input raises ``TierHpoError`` with one line; a failed run
leaves ``data/raw`` and ``data.dvc`` as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from common import config, limits, paths
from common.errors import TierHpoError
from pipelines.dvc_data import (
    cached,
    dir_md5,
    dvc_file_path,
    locked,
    open_repo,
    replace_and_track,
    tracked_md5,
)
from pipelines.ohlcv import (  # noqa: F401  (re-exported: the stage's public reading API)
    BUNDLED,
    _day,
    bundled_sp500,
    canonical_ohlcv,
    check_gaps_of,
    check_length,
    read_raw,
    read_source,
    render_csv,
    required_rows,
)
from training.dataset import DataConfig, check_symbol, load_data_config


@dataclass(frozen=True)
class IngestConfig:
    source: str = BUNDLED  # "arch" = the bundled S&P 500, or a path to a CSV / parquet file
    max_input_mb: float = limits.MAX_INPUT_MB  # larger source files are refused (common.limits)
    max_rows: int = limits.MAX_ROWS

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise TierHpoError("ingest.source: give 'arch' or a path to a CSV/parquet file")
        if self.max_input_mb <= 0 or self.max_rows < 1:
            raise TierHpoError("ingest.max_input_mb must be > 0 and ingest.max_rows >= 1")


def load_and_validate(source: str, data: DataConfig, cfg: IngestConfig | None = None) -> tuple[pd.DataFrame, str]:
    cfg = cfg or IngestConfig()
    if source == BUNDLED:
        frame, where = bundled_sp500(), "bundled S&P 500 (arch.data.sp500)"
    else:
        frame, where = read_source(source, cfg.max_input_mb, cfg.max_rows), Path(source).name
    df = canonical_ohlcv(frame, where)
    gaps = check_gaps_of(df, data, where)
    if gaps:
        typer.echo(f"ingest: note: {len(gaps)} calendar gap(s) over {data.max_gap_days} days kept (data.allow_gaps); "
                   "windows and labels spanning them are dropped by `tierhpo tiers`")
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


def ingest(source: str, symbol: str, data: DataConfig, cfg: IngestConfig | None = None) -> str:
    check_symbol(symbol)
    df, where = load_and_validate(source, data, cfg)
    raw = paths.raw_dir()
    raw.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ingest.", dir=raw.parent) as tmp:
        staged = stage_raw(df, symbol, keep_others=True, workdir=Path(tmp))
        new_md5 = dir_md5(staged)
        dvc_file = dvc_file_path()
        if dvc_file.exists() and raw.is_dir() and tracked_md5(dvc_file) == new_md5 == dir_md5(raw):
            repo = open_repo()
            with locked(repo):
                if not cached(repo):
                    repo.commit(os.fspath(dvc_file_path()), force=True)
            md5 = new_md5
            verb = "unchanged"
        else:
            md5 = replace_and_track(staged)
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
        repo.checkout(targets=[os.fspath(dvc_file_path())])
    except DvcException:
        return False  # the cache holds the directory listing but not every file
    raw = paths.raw_dir()
    if raw.exists() and dir_md5(raw) == expected:
        return True
    shutil.rmtree(raw, ignore_errors=True)
    return False


def ensure(data: DataConfig) -> str:
    """Make data/raw match data.dvc and sit in the DVC cache; never re-track anything."""
    dvc_file, raw = dvc_file_path(), paths.raw_dir()
    if not dvc_file.exists():
        typer.echo("ingest --ensure: no data.dvc yet; ingesting the bundled S&P 500")
        return ingest(BUNDLED, data.symbol, data)
    expected = tracked_md5(dvc_file)
    if not expected:
        raise TierHpoError("data.dvc records no hash for data/raw; run `tierhpo ingest` to track the data")
    repo = open_repo()
    with locked(repo):
        if raw.exists():
            actual = dir_md5(raw)
            if actual != expected:
                raise TierHpoError(
                    f"data/raw ({actual}) differs from data.dvc ({expected}): restore it with "
                    "`dvc checkout data.dvc`, or track the new data with `tierhpo ingest --source FILE`"
                )
            if not cached(repo):
                repo.commit(os.fspath(dvc_file_path()), force=True)
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
        repo.commit(os.fspath(dvc_file_path()), force=True)
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
    max_input_mb: Annotated[
        float | None, typer.Option(help=f"Largest source file in MiB; default ingest.max_input_mb ({limits.MAX_INPUT_MB})")
    ] = None,
    max_rows: Annotated[int | None, typer.Option(help=f"Most data rows; default ingest.max_rows ({limits.MAX_ROWS})")] = None,
) -> None:
    """Validate raw OHLCV (default: the bundled S&P 500) into data/raw/ and track it with data.dvc."""
    data = load_data_config()
    if ensure_data:
        if source is not None or symbol is not None or max_input_mb is not None or max_rows is not None:
            raise TierHpoError("--ensure restores the data tracked by data.dvc and takes no --source or --symbol")
        ensure(data)
        return
    cfg = config.load(IngestConfig, "ingest", source=source, max_input_mb=max_input_mb, max_rows=max_rows)
    if symbol is not None:
        check_symbol(symbol)  # '' is refused, never read as "the default symbol"
    target = replace(data, symbol=symbol) if symbol is not None else data
    ingest(cfg.source, target.symbol, data, cfg)
