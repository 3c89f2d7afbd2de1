"""``tierhpo stores relocate --from OLD``: make a copied ``stores/`` folder self-contained.

After ``cp -r /old/repo/stores /new/repo/stores`` (or moving the repo), the MLflow store still
names ``/old/repo/stores/mlartifacts/...`` as every run's and model's artifact location (MLflow
keeps them absolute). Run this with the environment of the new copy (its ``TIERHPO_STORE_DIR`` /
``MLFLOW_TRACKING_URI``, or from the new repo) to point them at the copy; the original can then
be deleted. See common/relocate.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common import paths
from common.errors import TierHpoError
from common.store_init import sqlite_file

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.callback()
def stores() -> None:
    """Maintain the MLflow and Optuna stores."""


@app.command()
def relocate(
    source: Annotated[Path, typer.Option("--from", help="the store folder the copy was made from (it may be gone)")],
    target: Annotated[Path | None, typer.Option("--to", help="the copied store folder (default: this project's)")] = None,
) -> None:
    """Point a copied store's artifact locations at the copy (MLflow keeps them absolute)."""
    from common.relocate import relocate_mlflow

    new = target if target is not None else paths.store_dir()
    uri = paths.mlflow_tracking_uri() if target is None else f"sqlite:///{Path(target).resolve() / 'mlflow.db'}"
    db = sqlite_file(uri)
    if db is None:
        raise TierHpoError(f"relocate rewrites a SQLite MLflow store; the tracking URI is {uri.split('://')[0]}://...")
    changed = relocate_mlflow(db, source, new)
    for what, count in changed.items():
        typer.echo(f"{what}: {count}")
    if not any(changed.values()):
        raise TierHpoError(f"nothing in {db} pointed under {Path(source).expanduser().resolve()}: wrong --from?")
