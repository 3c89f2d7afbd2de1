"""Move a copied ``stores/`` folder: rewrite the MLflow store's absolute artifact locations.

MLflow stores every artifact location as an absolute URI (``file:///<stores>/mlartifacts/...``):
a relative ``artifact_location`` is resolved against the current directory when the experiment
is created (mlflow/mlflow#7670), never against the tracking store. A copied ``stores/`` folder
therefore still points at the original artifact folders: runs log into, and ``models:/`` URIs
load from, the original, and break once it is deleted. ``relocate`` rewrites every location under
the old store folder to the same place under the new one, in one SQLite transaction, plus the
informational ``artifact_path`` line of each copied ``MLmodel`` file. The Optuna store holds no
paths and needs nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from common.errors import TierHpoError

# Every column of MLflow's SQL schema (3.x) that holds an artifact location or a model source.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def _forms(old: Path, new: Path) -> list[tuple[str, str]]:
    """The two spellings MLflow stores a local path in: a ``file://`` URI and a plain path."""
    return [(old.as_uri(), new.as_uri()), (str(old), str(new))]


def relocate_mlflow(db: Path, old: Path, new: Path) -> dict[str, int]:
    """Rewrite locations under ``old`` to ``new`` in the MLflow SQLite store ``db``; rows changed per column."""
    old, new = Path(old).expanduser().resolve(), Path(new).expanduser().resolve()
    if not db.is_file():
        raise TierHpoError(f"no MLflow store at {db}")
    if old == new:
        raise TierHpoError(f"--from and --to are the same folder ({old})")
    con = sqlite3.connect(db)
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            raise TierHpoError(f"{db} is not an MLflow tracking store (no experiments table)")
        changed: dict[str, int] = {}
        with con:  # one transaction: all rewritten or none
            for table, column in COLUMNS:
                if table not in tables or column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                    continue
                count = 0
                for before, after in _forms(old, new):
                    cur = con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (after, len(before) + 1, before, len(before) + 1, before + "/"),
                    )
                    count += cur.rowcount
                changed[f"{table}.{column}"] = count
    finally:
        con.close()
    changed["MLmodel files"] = _rewrite_mlmodels(new, old, new)
    return changed


def _rewrite_mlmodels(root: Path, old: Path, new: Path) -> int:
    """``artifact_path: file:///<old>/...`` lines of the MLmodel files under ``root`` (MLflow 3 writes them)."""
    count = 0
    for mlmodel in root.rglob("MLmodel"):
        text = mlmodel.read_text()
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.startswith("artifact_path:"):
                for before, after in _forms(old, new):
                    value = line[len("artifact_path:"):].strip()
                    if value == before or value.startswith(before + "/"):
                        lines[i] = line.replace(before, after, 1)
                        break
        if "".join(lines) != text:
            mlmodel.write_text("".join(lines))
            count += 1
    return count
