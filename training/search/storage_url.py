"""The shape of an Optuna storage URL, checked with no I/O before anything touches the storage.

``normalize_storage_url(url)`` parses the URL, checks the backend and returns it unchanged in
meaning: ``postgresql://`` is SQLAlchemy 2.1's psycopg 3 default, the installed driver, so the same
URL works in tierhpo, Optuna, optuna-dashboard and ``mlflow server``; nothing is rewritten. A
SQLite URL must name an absolute path in an existing folder (every worker must open the same
file). Every refusal is a one-line ``TierHpoError``; URLs are shown only through
``common.redact.redact``. Connecting, locking and opening are ``training.search.storage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import TierHpoError
from common.redact import redact

SUPPORTED = "sqlite:////abs/path/optuna.db or postgresql://USER@HOST[:PORT]/DBNAME"
PG_DRIVERS = (None, "psycopg")  # psycopg 3 (psycopg[binary]); SQLAlchemy's default for postgresql://


def has_inline_password(url: str) -> bool:
    """Whether ``url`` carries a password (in its user info or a ``password=`` query parameter)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(str(url).strip())
    except Exception:
        return False
    return bool(parsed.password) or any("password" in k.lower() for k in parsed.query)


def parse_storage_url(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not isinstance(url, str) or not url.strip():
        raise TierHpoError(f"empty storage URL; use {SUPPORTED}")
    try:
        return make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        reason = "the port must be a number" if isinstance(exc, ValueError) else "it is not a URL"
        raise TierHpoError(f"cannot parse storage URL {redact(url)!r} ({reason}); use {SUPPORTED}") from None


def normalize_storage_url(url: str, *, from_params_file: bool = False) -> str:
    """Validate the shape of ``url`` (no I/O) and return the URL to give to SQLAlchemy/Optuna.

    ``from_params_file``: the URL came from a versioned file (params.yaml), where a password
    would end up in git and DVC; refuse it there.
    """
    parsed = parse_storage_url(url)
    backend = parsed.drivername.split("+", 1)[0]
    driver = parsed.drivername.split("+", 1)[1] if "+" in parsed.drivername else None
    shown = redact(url)
    if from_params_file and has_inline_password(url):
        raise TierHpoError(
            f"storage URL {shown} in params.yaml holds a password; remove it and put it in "
            "~/.pgpass or PGPASSWORD (see docs/distributed.md)"
        )
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or db.startswith("file::memory:"):
            raise TierHpoError(f"storage URL {shown} is an in-memory SQLite database; workers cannot share it. "
                               f"Use {SUPPORTED}")
        path = Path(db).expanduser()
        if not path.is_absolute():
            raise TierHpoError(f"storage URL {shown} has a relative SQLite path; use an absolute one "
                               f"(sqlite:////abs/path/optuna.db) so every process opens the same file")
        if not path.parent.is_dir():
            raise TierHpoError(f"storage URL {shown}: folder {path.parent} does not exist; create it first")
        if path.exists() and not path.is_file():
            raise TierHpoError(f"storage URL {shown}: {path} is not a file")
        return parsed.set(database=str(path)).render_as_string(hide_password=False)
    if backend == "postgres":
        # SQLAlchemy, Optuna and MLflow all refuse the 'postgres' scheme: say so here, once.
        raise TierHpoError(f"storage URL {shown}: write postgresql://..., the scheme SQLAlchemy, Optuna "
                           f"and mlflow server accept")
    if backend == "postgresql":
        if driver not in PG_DRIVERS:
            raise TierHpoError(f"storage URL {shown}: driver '{driver}' is not supported; "
                               f"use postgresql://... (psycopg 3, SQLAlchemy's default)")
        if not parsed.database:
            raise TierHpoError(f"storage URL {shown} names no database; use {SUPPORTED}")
        return str(url).strip()
    raise TierHpoError(f"unsupported storage backend '{parsed.drivername}' in {shown}; use {SUPPORTED}")


def is_postgres(url: str) -> bool:
    return parse_storage_url(url).drivername.startswith("postgres")


def backend_is_sqlite(parsed: Any) -> bool:
    return parsed.drivername.split("+", 1)[0] == "sqlite"
