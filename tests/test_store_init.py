"""First opens of the SQLite stores (issue #16): concurrent first runs, half-migrated MLflow store,
corrupt Optuna file, read-only store. Real MLflow and Optuna stores in tmp_path, real processes.

The child processes run ``benchmarks.store_init.FIRST_RUN``: the store opening of the first
seconds of ``tierhpo hpo`` through the project's own code (``make_storage``, ``StudyTracking``),
with the CLI's handling of ``TierHpoError`` (one line on stderr, exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.store_init import FIRST_RUN, REPO, concurrent_first_runs, env

# Every case starts tierhpo processes on a fresh store (7-90 s each): the slow tier, which CI runs.
pytestmark = pytest.mark.slow

VENV_BIN = str(Path(sys.executable).parent)


def first_run(store: Path) -> subprocess.CompletedProcess:
    store.mkdir(exist_ok=True)
    go = store.parent / ".go-now"
    go.touch()
    return subprocess.run([sys.executable, "-c", FIRST_RUN, str(store), str(go), "project"], env=env(store),
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    errors = lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("tierhpo: error: ")
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def run_counts(store: Path) -> tuple[int, int]:
    """(finished MLflow runs, complete Optuna trials) in ``store``, opened through the project's code."""
    import optuna

    from common import store_init

    client = store_init.mlflow_client(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tierhpo-a50")
    runs = client.search_runs([exp.experiment_id])
    study = optuna.load_study(study_name="first-run", storage=f"sqlite:///{store / 'optuna.db'}")
    return len(runs), len(study.get_trials(deepcopy=False))


def test_two_concurrent_first_runs_on_a_fresh_store_both_succeed(tmp_path):
    for attempt in range(3):
        store = tmp_path / f"store{attempt}"
        results, _ = concurrent_first_runs(store, 2)
        for res in results:
            assert res.returncode == 0, res.stderr[-3000:]
        assert run_counts(store) == (2, 2)
        # A later run on the same store opens it without migrating and succeeds too.
        again = first_run(store)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Creating initial MLflow database tables" not in again.stderr
        assert run_counts(store) == (3, 3)


def _half_migrated_store(db: Path) -> None:
    """An MLflow store interrupted in its last migration: schema one revision short of head, and
    the ``_alembic_tmp_experiments`` table that alembic's SQLite batch mode leaves when killed."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import InitialBase, _get_alembic_config, _get_latest_schema_revision

    url = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    engine.dispose()
    config = _get_alembic_config(url)
    previous = ScriptDirectory.from_config(config).get_revision(_get_latest_schema_revision()).down_revision
    command.upgrade(config, previous)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
        con.commit()


def test_half_migrated_mlflow_store_is_one_line_with_a_repair_that_works(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    db = store / "mlflow.db"
    _half_migrated_store(db)
    before = digest(db)

    result = first_run(store)
    message = assert_one_line_error(result, str(db), "half-migrated", "_alembic_tmp_experiments",
                                    "mlflow db upgrade")
    assert digest(db) == before

    repair = message.split("repair it with: ", 1)[1].split(" (or move it aside", 1)[0]
    fixed = subprocess.run(repair, shell=True, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    result = first_run(store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_counts(store) == (1, 1)


def test_out_of_date_mlflow_store_names_mlflow_db_upgrade(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    db = store / "mlflow.db"
    _half_migrated_store(db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("DROP TABLE _alembic_tmp_experiments")
        con.commit()
    before = digest(db)
    assert_one_line_error(first_run(store), str(db), "schema revision", f"mlflow db upgrade sqlite:///{db}")
    assert digest(db) == before


def test_corrupt_optuna_file_is_one_line_and_left_unchanged(tmp_path):
    store = tmp_path / "store"
    assert first_run(store).returncode == 0
    db = store / "optuna.db"
    assert not (store / "optuna.db-wal").exists() or (store / "optuna.db-wal").stat().st_size == 0
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = os.urandom(4096)
    db.write_bytes(bytes(data))
    before = digest(db)

    assert_one_line_error(first_run(store), str(db), "corrupt", "mv ")
    assert digest(db) == before


def test_garbage_optuna_file_is_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    db = store / "optuna.db"
    db.write_bytes(os.urandom(8192))
    before = digest(db)
    assert_one_line_error(first_run(store), str(db), "corrupt")
    assert digest(db) == before


@contextlib.contextmanager
def immutable(path: Path):
    """Make ``path`` read-only even for root (``chattr +i``); skip where the filesystem refuses."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot make {path} immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _read_only(path: Path):
    if os.geteuid() == 0:
        return immutable(path)
    mode = path.stat().st_mode

    @contextlib.contextmanager
    def chmod():
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)

    return chmod()


def test_read_only_store_folder_is_one_line(tmp_path):
    store = tmp_path / "store"
    assert first_run(store).returncode == 0
    with _read_only(store):
        assert_one_line_error(first_run(store), str(store), "read-only")


def test_read_only_store_file_is_one_line(tmp_path):
    store = tmp_path / "store"
    assert first_run(store).returncode == 0
    db = store / "optuna.db"
    with _read_only(db):
        assert_one_line_error(first_run(store), str(db), "read-only")


def test_fresh_read_only_folder_is_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with _read_only(store):
        assert_one_line_error(first_run(store), str(store), "read-only")
    assert not (store / "optuna.db").exists() and not (store / "mlflow.db").exists()
