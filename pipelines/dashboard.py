"""``tierhpo dashboard``: optuna-dashboard on the project's Optuna storage, at http://127.0.0.1:8080.

The storage is ``paths.optuna_storage_url()`` (``TIERHPO_OPTUNA_STORAGE``, default
``sqlite:///<stores>/optuna.db``), the one ``tierhpo hpo`` writes, or ``--storage URL``. A SQLite
storage whose file does not exist is refused with one line (optuna-dashboard would silently create
an empty database); other URLs (``postgresql://``) are opened as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common import paths
from common.errors import TierHpoError
from common.redact import redact

SQLITE = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for any other URL or an in-memory one)."""
    if not url.startswith(SQLITE):
        return None
    rest = url[len(SQLITE):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def check_storage(url: str) -> str:
    """``url`` if it names an existing storage; one line (TierHpoError) for a missing SQLite file."""
    path = sqlite_file(url)
    if url.startswith("sqlite") and path is None:
        raise TierHpoError(f"Optuna storage {redact(url)} is not a SQLite file; give sqlite:///PATH/optuna.db")
    if path is not None and not path.is_file():
        raise TierHpoError(
            f"no Optuna storage at {path}: run `tierhpo hpo` first, or pass --storage / set TIERHPO_OPTUNA_STORAGE"
        )
    return url


def dashboard_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/"


app = typer.Typer(add_completion=False)


@app.command()
def main(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind; the default keeps it on this machine.")] = "127.0.0.1",
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL (default: the project's, as `tierhpo hpo` uses).")] = None,
) -> None:
    """Start optuna-dashboard on the project's Optuna storage (127.0.0.1:8080)."""
    if not 1 <= port <= 65535:
        raise TierHpoError(f"--port must be in 1..65535, got {port}")
    url = check_storage(storage or paths.optuna_storage_url())
    from optuna_dashboard import run_server

    typer.echo(f"dashboard: {redact(url)} at {dashboard_url(host, port)} (Ctrl-C stops it)")
    run_server(url, host=host, port=port)
