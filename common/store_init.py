"""Opening the SQLite stores (MLflow tracking, Optuna study storage) for the first time, safely.

Two processes that open a fresh store at the same moment both see "no tables" and both run the
schema creation and migrations: MLflow's alembic migrations then fail (``Online migration
expected to match one row``, ``table latest_metrics already exists``) and can leave a
half-migrated store behind (``_alembic_tmp_*`` tables) that every later run trips over.

Here every first open of a SQLite store in a process goes through one place:

* ``store_lock(db)``: a file lock on ``<db>.init.lock`` beside the store (``filelock``, i.e.
  ``flock``: released by the OS when the holder dies, so a killed run never leaves it held).
  Creation and migration run under it; whoever comes second finds the store at the head
  revision and opens it without migrating.
* Before that, one-line ``TierHpoError`` checks that name the file and what to do:
  read-only file or folder, a file that is not a SQLite database or has corrupt pages
  (``PRAGMA quick_check``), and, for MLflow, a half-migrated store (a leftover ``_alembic_tmp_*``
  table or a schema revision that is not this MLflow's head), with the command that repairs it.

``mlflow_client(uri)`` returns an ``MlflowClient`` on an initialised store (``ensure_mlflow_store``
does the checks + locked creation only); ``open_optuna_sqlite(url, open_fn)`` runs the code that
builds an ``RDBStorage`` after the checks and under the lock. Non-SQLite URLs (PostgreSQL,
an MLflow server) pass through untouched. Each store is checked once per process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from filelock import FileLock, Timeout

from common.errors import TierHpoError

LOCK_TIMEOUT_S = 600.0
T = TypeVar("T")
_READY: set[tuple[int, str, str]] = set()
_GUARD = threading.Lock()


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory databases)."""
    text = str(url).strip()
    if not text.startswith("sqlite"):
        return None
    rest = text.split("://", 1)[1] if "://" in text else ""
    if not rest.startswith("/"):
        return None
    db = unquote(rest[1:].split("?", 1)[0])
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


@contextlib.contextmanager
def store_lock(db: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the init lock of the store ``db`` (``<db>.init.lock``) across processes on this machine."""
    lock_path = db.with_name(f"{db.name}.init.lock")
    lock = FileLock(str(lock_path), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise TierHpoError(f"the store {db} stayed locked ({lock_path}) for {timeout_s:.0f} s; "
                           "is another run stuck initialising it?") from None
    try:
        yield
    finally:
        lock.release()


def check_writable(db: Path, what: str, env: str) -> None:
    """One line when the store's folder or file cannot be written (SQLite needs both: it creates
    journal/WAL files beside the database)."""
    folder = db.parent
    if not folder.is_dir():
        raise TierHpoError(f"the {what} folder {folder} does not exist; create it or point {env} elsewhere")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{db.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise TierHpoError(f"the {what} folder {folder} is read-only ({exc.strerror}); SQLite must create "
                           f"journal files beside {db.name}: make it writable or point {env} at a "
                           "writable folder") from None
    os.close(fd)
    os.unlink(probe)
    if db.exists():
        if not db.is_file():
            raise TierHpoError(f"the {what} {db} is not a file; move it aside or point {env} elsewhere")
        try:
            with open(db, "r+b"):
                pass
        except OSError as exc:
            raise TierHpoError(f"the {what} {db} is read-only ({exc.strerror}); make it writable "
                               f"(chmod u+w {db}) or point {env} at a writable store") from None


def _connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=60)


def check_integrity(db: Path, what: str, env: str) -> None:
    """One line when ``db`` is not a SQLite database or has corrupt pages (``PRAGMA quick_check``)."""
    if not db.is_file() or db.stat().st_size == 0:
        return
    problem = None
    try:
        with contextlib.closing(_connect_ro(db)) as con:
            rows = [r[0] for r in con.execute("PRAGMA quick_check(3)").fetchall()]
        if rows != ["ok"]:
            problem = "; ".join(str(r) for r in rows)[:160]
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem:
        raise TierHpoError(f"the {what} {db} is corrupt ({problem}); move it aside (mv {db} {db}.corrupt) "
                           f"to start a fresh one, or salvage it (sqlite3 {db} .recover | sqlite3 {db}.recovered) "
                           f"and point {env} at the copy")


def _tables(db: Path) -> set[str]:
    with contextlib.closing(_connect_ro(db)) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def check_mlflow_schema(db: Path) -> None:
    """One line when the MLflow store ``db`` was left half-migrated or is not at this MLflow's head revision."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    tables = _tables(db)
    if not tables:
        return  # an empty file: created on first open
    uri = f"sqlite:///{db}"
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        drops = "; ".join(f"DROP TABLE {t}" for t in leftovers)
        raise TierHpoError(f"the MLflow store {db} was left half-migrated (leftover table {', '.join(leftovers)}, "
                           f"an interrupted schema migration); back it up, then repair it with: "
                           f"sqlite3 {db} '{drops};' && mlflow db upgrade {uri} "
                           f"(or move it aside, mv {db} {db}.broken, to start a fresh store)")
    if "alembic_version" not in tables:
        raise TierHpoError(f"the MLflow store {db} has tables but no schema version (not an MLflow store, or "
                           f"its creation was interrupted); move it aside (mv {db} {db}.broken) to start a fresh store")
    with contextlib.closing(_connect_ro(db)) as con:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    head = _get_latest_schema_revision()
    if row is None or row[0] != head:
        found = row[0] if row else "none"
        raise TierHpoError(f"the MLflow store {db} is at schema revision {found}, not this MLflow's {head}; "
                           f"back it up, then repair it with: mlflow db upgrade {uri} "
                           f"(or move it aside, mv {db} {db}.broken, to start a fresh store)")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)[:200]


def _once(kind: str, db: Path, init: Callable[[], None]) -> None:
    key = (os.getpid(), kind, str(db))
    with _GUARD:
        if key in _READY:
            return
        init()
        _READY.add(key)


def ensure_mlflow_store(uri: str | None = None) -> str:
    """Create or check the MLflow SQLite store of ``uri`` (default: the project's) under the init
    lock; raise a one-line ``TierHpoError`` when it is read-only, corrupt or half-migrated."""
    from common import paths

    uri = uri or paths.mlflow_tracking_uri()
    db = sqlite_file(uri)
    if db is None:
        return uri
    what, env = "MLflow store", "MLFLOW_TRACKING_URI"

    def init() -> None:
        check_writable(db, what, env)
        with store_lock(db):
            check_integrity(db, what, env)
            if db.is_file() and db.stat().st_size > 0:
                check_mlflow_schema(db)
            from mlflow.tracking import MlflowClient

            try:
                _ = MlflowClient(uri)._tracking_client.store  # creates and migrates a fresh store
            except Exception as exc:
                raise TierHpoError(f"cannot open the MLflow store {db}: {_first_line(exc)}; if it is damaged, "
                                   f"move it aside (mv {db} {db}.broken) to start a fresh store") from None

    _once("mlflow", db, init)
    return uri


def mlflow_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``uri`` (default: the project's store), initialised through ``ensure_mlflow_store``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(ensure_mlflow_store(uri))


def open_optuna_sqlite(url: str, open_fn: Callable[[], T]) -> T:
    """``open_fn()`` (the code that builds the ``RDBStorage`` of ``url``, creating its tables on a
    fresh SQLite file), run the first time in this process after the checks and under the init lock.

    Non-SQLite URLs just run ``open_fn``.
    """
    db = sqlite_file(url)
    key = (os.getpid(), "optuna", str(db))
    if db is None or key in _READY:
        return open_fn()
    what, env = "Optuna storage", "TIERHPO_OPTUNA_STORAGE"
    with _GUARD:
        check_writable(db, what, env)
        with store_lock(db):
            check_integrity(db, what, env)
            result = open_fn()
        _READY.add(key)
    return result
