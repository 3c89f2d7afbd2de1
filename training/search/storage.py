"""The study storage: reach it, create its schema once, open it for workers and readers, lock a study.

Every failure here is a one-line ``TierHpoError`` that says what to fix, raised *before*
``optuna.storages.RDBStorage`` runs: RDBStorage creates tables (and SQLite creates files) on
first contact, so a typo must stop us earlier, with no study and no file created by accident.
URLs are shown only through ``common.redact.redact``.

* The URL's shape is checked first, with no I/O, by ``training.search.storage_url``
  (``normalize_storage_url``).
* ``check_storage_reachable(url)``: connect once (short timeout) and translate libpq failures
  (missing database, refused connection, bad credentials) into one actionable line.
* ``ensure_schema(url)``: create Optuna's tables once, under a lock.
* ``make_storage(url, cfg, on_stale)``: the ``RDBStorage`` with heartbeats that workers use
  (SQLite in WAL mode).
* ``study_lock(url, study_name)``: a cross-process, cross-machine mutex for the few
  read-decide-write steps that must not interleave (study setup, "is there a trial slot left?"
  + ``ask``). PostgreSQL advisory lock, or ``flock`` on a file next to a SQLite database; both
  are released by the OS/server when the holder dies, so a SIGKILLed worker never leaves the
  study locked.

Credentials: with ``postgresql://user@host/db`` (no password) libpq reads ``PGPASSWORD`` or
``~/.pgpass`` itself; that is the recommended way (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import store_init
from common.errors import TierHpoError
from common.redact import redact
from training.search.storage_url import (
    backend_is_sqlite,
    is_postgres,
    normalize_storage_url,
    parse_storage_url,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

    from training.search.config import StorageConfig

CONNECT_TIMEOUT_S = 5
# No wait on PostgreSQL may last for ever: a worker blocked on a row lock held by a session that
# died mid-transaction, or on a socket whose server vanished without a reset, would hold its
# study (and the local run waiting for it) until someone kills it. Each bound turns such a wait
# into an OperationalError, which a worker treats as a lost connection: it backs off, reconnects
# and resumes (``reconnect.is_connection_loss``). The bounds are minutes, far above any of
# Optuna's short transactions.
PG_SESSION_OPTIONS = ("-c lock_timeout=120s -c idle_in_transaction_session_timeout=300s "
                      "-c statement_timeout=600s")
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def pg_connect_args(connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """libpq arguments for every tierhpo connection to PostgreSQL (see ``PG_SESSION_OPTIONS``)."""
    return {"connect_timeout": connect_timeout_s, "options": PG_SESSION_OPTIONS, **PG_KEEPALIVES}


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return redact(line.removeprefix("FATAL:").strip())
    return type(exc).__name__


class StorageUnavailable(TierHpoError):
    """The storage server did not answer or dropped the connection (down, restarting, network):
    worth retrying, unlike a missing database, bad credentials or a bad URL."""


class StorageBusy(TierHpoError):
    """A study lock was not granted in time."""


def connection_error(url: str, exc: BaseException) -> TierHpoError:
    """The ``TierHpoError`` (``StorageUnavailable`` when retrying can help) for a failed connection."""
    message = describe_connection_error(url, exc)
    text = str(getattr(exc, "orig", None) or exc)
    permanent = "does not exist" in text or "password" in text or "authentication failed" in text
    if _is_operational(exc) and not permanent:
        return StorageUnavailable(message)
    return TierHpoError(message)


def describe_connection_error(url: str, exc: BaseException) -> str:
    """One actionable line for a failed connection to the storage at ``url``."""
    parsed = parse_storage_url(url)
    where = f"{parsed.host or 'local socket'}:{parsed.port or 5432}"
    text = str(getattr(exc, "orig", None) or exc)
    if "does not exist" in text and "database" in text:
        return (f"database '{parsed.database}' does not exist on PostgreSQL at {where}; create it first "
                f"(createdb -h {parsed.host or 'localhost'} -p {parsed.port or 5432} "
                f"-U {parsed.username or '$USER'} {parsed.database}), see docs/distributed.md")
    if "password" in text or "authentication failed" in text:
        return (f"PostgreSQL at {where} refused user '{parsed.username or '$USER'}': {_first_line(exc)}; "
                "put the password in ~/.pgpass or PGPASSWORD, never in params.yaml")
    if "role" in text and "does not exist" in text:
        return f"PostgreSQL at {where}: {_first_line(exc)}; create the role or fix the user in the URL"
    if backend_is_sqlite(parsed):
        return f"cannot open SQLite storage {redact(url)}: {_first_line(exc)}"
    if not _is_operational(exc):
        return f"the study storage {redact(url)} failed: {_first_line(exc)}"
    return (f"cannot reach the study storage {redact(url)}: {_first_line(exc)}; "
            "is the server running and reachable from this machine?")


def _is_operational(exc: BaseException) -> bool:
    """A connection-level failure (server down, refused, timed out), as opposed to a failed statement."""
    import sqlalchemy.exc

    return isinstance(exc, (sqlalchemy.exc.OperationalError, OSError)) or \
        type(getattr(exc, "orig", None)).__name__ == "OperationalError"


def _engine(url: str):
    import sqlalchemy

    connect_args = pg_connect_args() if is_postgres(url) else {}
    return sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)


def check_storage_reachable(url: str) -> str:
    """Normalize ``url`` and open one connection to it; raise ``TierHpoError`` when that fails.

    Creates nothing on PostgreSQL. On SQLite it may create the empty database file, which is
    what the first run of a study does anyway (its folder was checked to exist).
    """
    import sqlalchemy.exc

    url = normalize_storage_url(url)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise connection_error(url, exc) from None
    finally:
        engine.dispose()
    return url


SCHEMA_LOCK = "__optuna_schema__"


def ensure_schema(url: str) -> None:
    """Create Optuna's tables once, under a lock.

    ``RDBStorage`` runs ``CREATE TABLE`` (and PostgreSQL ``CREATE TYPE``) on every open; two
    processes doing it at the same time on an empty database fail with a duplicate-key error
    from the catalog. Workers and machines starting together therefore go through here first.
    """
    import warnings

    import optuna

    url = normalize_storage_url(url)

    def create() -> None:
        with study_lock(url, SCHEMA_LOCK), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                storage = optuna.storages.RDBStorage(url)
            except Exception as exc:
                raise connection_error(url, exc) from None
            storage.remove_session()
            storage.engine.dispose()

    store_init.open_optuna_sqlite(url, create)


def study_exists(storage: Any, study_name: str) -> bool:
    """Whether ``study_name`` is in ``storage`` (an Optuna storage); never creates one."""
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


_LOCK_ENGINES: dict[tuple[int, str], Any] = {}


def _lock_engine(url: str):
    """One small pool per process and URL for lock sessions (a new connection per lock would cost
    a TCP + auth round trip each trial). Keyed by pid: a forked child never reuses its parent's."""
    import sqlalchemy

    key = (os.getpid(), url)
    if key not in _LOCK_ENGINES:
        _LOCK_ENGINES[key] = sqlalchemy.create_engine(
            url, pool_size=1, max_overflow=4, pool_pre_ping=True,
            connect_args=pg_connect_args(),
        )
    return _LOCK_ENGINES[key]


@contextmanager
def _pg_advisory_lock(url: str, study_name: str, deadline: float, timeout_s: float,
                      poll_s: float) -> Iterator[None]:
    import sqlalchemy.exc

    key = _lock_key(study_name)
    try:
        conn = _lock_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT")
        while not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar():
            if time.monotonic() > deadline:
                conn.close()
                raise StorageBusy(f"study '{study_name}' stayed locked by another worker for "
                                  f"{timeout_s:.0f} s; is a worker stuck?")
            time.sleep(poll_s)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise connection_error(url, exc) from None
    try:
        yield
    finally:
        try:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
            conn.close()
        except sqlalchemy.exc.SQLAlchemyError:
            # Gone with its connection (the server released the lock), or unknown: never let a
            # session that may still hold the lock go back to the pool.
            with suppress(Exception):
                conn.invalidate()


def _lock_key(study_name: str) -> int:
    # pg_advisory_lock takes a signed 64-bit key; derive it from the study name.
    digest = hashlib.blake2b(f"tierhpo:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def study_lock(url: str, study_name: str, timeout_s: float = 600.0, poll_s: float = 0.05) -> Iterator[None]:
    """Hold a mutex named after ``study_name`` shared by every process using storage ``url``.

    PostgreSQL: a session-level advisory lock on its own connection (``pg_try_advisory_lock``
    polled, so the wait is bounded). SQLite: ``flock`` on ``<db>.lock`` beside the database
    (same machine only, which is all SQLite supports). Raises ``TierHpoError`` after
    ``timeout_s`` without the lock.
    """
    url = normalize_storage_url(url)
    deadline = time.monotonic() + timeout_s
    if is_postgres(url):
        with _pg_advisory_lock(url, study_name, deadline, timeout_s, poll_s):
            yield
        return
    db = Path(parse_storage_url(url).database)
    lock_path = db.with_name(f"{db.name}.{hashlib.sha1(study_name.encode()).hexdigest()[:10]}.lock")
    with open(lock_path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageBusy(f"study '{study_name}' stayed locked ({lock_path}) for "
                                       f"{timeout_s:.0f} s; is a worker stuck?") from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_wal(url: str) -> None:
    """Put a SQLite study database in WAL mode (persistent in the file): one fsync per commit
    instead of several, and readers never block the writer. Safe for several processes on one host."""
    import sqlite3

    db = parse_storage_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def make_storage(url: str, cfg: StorageConfig,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> RDBStorage:
    """RDB storage with heartbeats (when ``cfg`` sets them); a bad or unreachable URL is one
    actionable line; ``postgresql://`` is used as given: psycopg 3."""
    import warnings

    import sqlalchemy.exc
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    url = normalize_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # wait for another worker's write lock
    else:
        engine_kwargs = {"pool_pre_ping": True, "connect_args": pg_connect_args(10)}

    def build() -> RDBStorage:
        if url.startswith("sqlite"):
            try:
                _sqlite_wal(url)
            except Exception as exc:
                raise TierHpoError(describe_connection_error(url, exc)) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=cfg.heartbeat_interval,
                                  grace_period=cfg.grace_period, heartbeat_stale_trial_callback=on_stale)
            except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
                raise TierHpoError(describe_connection_error(url, exc)) from None

    # A fresh SQLite file gets its tables from the first RDBStorage: serialise that (and check the
    # file is writable and sound first) so two first runs never create the schema at once.
    return store_init.open_optuna_sqlite(url, build)
