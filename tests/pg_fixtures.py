"""Real PostgreSQL and a real ``mlflow server`` for the distributed tests and benchmark.

* ``fresh_database()``: a uniquely named database on the test server, always dropped afterwards
  (``DROP DATABASE ... WITH (FORCE)`` also ends sessions a killed worker left behind).
* ``mlflow_server(backend_url, artifacts)``: ``mlflow server`` as a subprocess on a free
  127.0.0.1 port against a PostgreSQL backend store; bounded wait for ``/health``, always
  terminated (process group, SIGTERM then SIGKILL).
* pytest fixtures ``postgres_server``, ``pg_database`` and ``mlflow_server_url`` built on them.

The server is ``TIERHPO_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth or ``~/.pgpass``). When it does not answer the tests FAIL with the reason; set
``TIERHPO_SKIP_POSTGRES=1`` to turn that into a loud skip instead (never a silent pass).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("TIERHPO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_PREFIX = "tierhpo_t_"
SERVER_START_TIMEOUT_S = 90.0
SERVER_STOP_TIMEOUT_S = 5.0  # its state is in PostgreSQL: a SIGKILL after this loses nothing


def _admin_connection(url: str = ADMIN_URL):
    # psycopg 3 takes the libpq URL: drop a SQLAlchemy '+driver' suffix if the caller gave one.
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    # autocommit: CREATE/DROP DATABASE cannot run inside a transaction
    return psycopg.connect(libpq, connect_timeout=5, autocommit=True)


def postgres_unavailable_reason(url: str = ADMIN_URL) -> str | None:
    """None when the test server answers, else a one-line reason."""
    try:
        _admin_connection(url).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)} is not usable: {first}"
    return None


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    """Plain ``postgresql://`` URL of database ``name`` on the admin server: the one URL that
    SQLAlchemy (psycopg 3, its default driver), Optuna, optuna-dashboard and ``mlflow server`` all take."""
    url = make_url(admin_url).set(drivername="postgresql", database=name)
    return url.render_as_string(hide_password=False)


def database_exists(name: str, admin_url: str = ADMIN_URL) -> bool:
    conn = _admin_connection(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def create_database(name: str, admin_url: str = ADMIN_URL) -> str:
    conn = _admin_connection(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return database_url(name, admin_url)


def drop_database(name: str, admin_url: str = ADMIN_URL) -> None:
    conn = _admin_connection(admin_url)
    try:
        with conn.cursor() as cur:
            # FORCE (PostgreSQL >= 13) terminates sessions left open by killed workers or servers.
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


def set_connections_allowed(name: str, allowed: bool, admin_url: str = ADMIN_URL) -> None:
    """Fault injection: refuse (and cut) every connection to database ``name``, or allow them again.

    What workers see is what a restarting or unreachable server gives them: their open
    connections are terminated and new ones are refused.
    """
    conn = _admin_connection(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allowed else "false")))
            if not allowed:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    finally:
        conn.close()


@contextmanager
def fresh_database(tag: str = "", admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it whatever happens."""
    name = f"{DB_PREFIX}{tag + '_' if tag else ''}{uuid.uuid4().hex[:12]}"
    url = create_database(name, admin_url)
    try:
        yield url
    finally:
        drop_database(name, admin_url)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn workers included), SIGKILL after a bounded wait."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, SERVER_STOP_TIMEOUT_S), (signal.SIGKILL, SERVER_STOP_TIMEOUT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mlflow_server(backend_url: str, artifacts: Path, log: Path | None = None) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 against ``backend_url``; yield its http URL."""
    artifacts.mkdir(parents=True, exist_ok=True)
    log = log or artifacts.parent / "mlflow-server.log"
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_url,
        "--artifacts-destination", artifacts.resolve().as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server exited with {proc.returncode} before serving:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S:.0f} s; log: {log}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


def hold_study_lock(url: str, name: str, ready, release) -> None:
    """Child-process target for the lock tests (here, not in the test module, so that a spawned
    child imports only this light module)."""
    from training.search.storage import study_lock

    with study_lock(url, name):
        ready.set()
        release.wait(60)  # the test SIGKILLs this process while it holds the lock


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the test server; fails (or, opted in, skips loudly) when it is down."""
    reason = postgres_unavailable_reason()
    if reason:
        if os.environ.get("TIERHPO_SKIP_POSTGRES") == "1":
            pytest.skip(f"SKIPPED POSTGRES TESTS (TIERHPO_SKIP_POSTGRES=1): {reason}")
        pytest.fail(f"{reason}; start it (.ci/run does) or set TIERHPO_SKIP_POSTGRES=1 to skip loudly")
    return ADMIN_URL


@pytest.fixture
def pg_database(postgres_server) -> Iterator[str]:
    """URL of a fresh, empty database, dropped after the test."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def mlflow_server_url(postgres_server, tmp_path, monkeypatch) -> Iterator[str]:
    """A real MLflow tracking server on a fresh PostgreSQL backend store; MLFLOW_TRACKING_URI points at it."""
    with fresh_database("mlflow") as backend, mlflow_server(backend, tmp_path / "mlartifacts") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
