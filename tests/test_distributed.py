"""Scale-out over PostgreSQL + an MLflow tracking server, each test in a fresh database dropped after it."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import optuna
import pg_fixtures
import pytest
from pg_fixtures import database_exists, database_url, free_port

from pipelines.errors import TierHpoError
from training.search import storage_checks as sc

# Fixtures, used by parameter name.
postgres_server = pg_fixtures.postgres_server
pg_database = pg_fixtures.pg_database
mlflow_server_url = pg_fixtures.mlflow_server_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- URL checks and redaction (no server)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cret@db.example:5432/hpo", "postgresql://alice:***@db.example:5432/hpo"),
        ("postgresql+psycopg2://alice:p%40ss@h/hpo", "postgresql+psycopg2://alice:***@h/hpo"),
        ("postgresql://alice@h/hpo?password=s3cret&sslmode=require", "postgresql://alice@h/hpo?password=***&sslmode=require"),
        ("postgresql://alice@h/hpo", "postgresql://alice@h/hpo"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_redact_url_hides_passwords_only(url, shown):
    assert sc.redact_url(url) == shown
    assert sc.redact_text(f"storage {url} failed") == f"storage {shown} failed"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "cannot parse"),
        ("postgresql://h:port/db", "port must be a number"),
        ("mysql://u@h/db", "unsupported storage backend 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "driver 'asyncpg' is not installed"),
        ("postgresql://u@h", "names no database"),
        ("sqlite://", "in-memory"),
        ("sqlite:///relative/optuna.db", "relative SQLite path"),
        ("", "empty storage URL"),
    ],
)
def test_bad_storage_urls_are_one_line_errors(url, needle):
    with pytest.raises(TierHpoError) as info:
        sc.normalize_storage_url(url)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_sqlite_in_missing_folder_is_refused_without_creating_it(tmp_path):
    target = tmp_path / "nope" / "optuna.db"
    with pytest.raises(TierHpoError, match="does not exist; create it first"):
        sc.check_storage_reachable(f"sqlite:///{target}")
    assert not target.parent.exists()


def test_password_in_params_file_is_refused_but_allowed_from_env():
    url = "postgresql://alice:s3cret@h/hpo"
    with pytest.raises(TierHpoError) as info:
        sc.normalize_storage_url(url, from_params_file=True)
    assert "s3cret" not in str(info.value) and "~/.pgpass" in str(info.value)
    assert sc.normalize_storage_url(url) == "postgresql+psycopg2://alice:s3cret@h/hpo"
    assert sc.normalize_storage_url("postgres://alice@h/hpo") == "postgresql+psycopg2://alice@h/hpo"


# ---------------------------------------------------------------- against the real server


@pytest.mark.postgres
def test_missing_database_is_a_clear_error_and_is_not_created(postgres_server):
    name = "tierhpo_t_missing_db_never_created"
    url = database_url(name)
    with pytest.raises(TierHpoError) as info:
        sc.check_storage_reachable(url)
    message = str(info.value)
    assert f"database '{name}' does not exist" in message and "createdb" in message
    assert "\n" not in message
    assert not database_exists(name)


@pytest.mark.postgres
def test_unreachable_server_and_unknown_role_are_clear_errors(postgres_server):
    with pytest.raises(TierHpoError, match="cannot reach the study storage"):
        sc.check_storage_reachable(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(TierHpoError, match="nosuchrole"):
        sc.check_storage_reachable("postgresql://nosuchrole:pw@127.0.0.1:5432/postgres")


@pytest.mark.postgres
def test_study_with_a_different_search_space_is_refused(pg_database):
    storage = optuna.storages.RDBStorage(pg_database)
    space_a = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
               "depth": optuna.distributions.IntDistribution(1, 4)}
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + t.suggest_int("depth", 1, 4),
                   n_trials=2)
    sc.check_study_compatible(storage, "s", space_a)  # same space: fine
    space_b = {**space_a, "depth": optuna.distributions.IntDistribution(1, 8)}
    with pytest.raises(TierHpoError, match=r"different search space \(differs in: depth\)"):
        sc.check_study_compatible(storage, "s", space_b)
    # a stored user attr wins over the trials' distributions
    study.set_user_attr("search_space", {"lr": {"low": 1e-4}, "depth": {"low": 1}})
    with pytest.raises(TierHpoError, match="differs in: depth, lr"):
        sc.check_study_compatible(storage, "s", {"lr": {"low": 1e-3}, "depth": {"low": 2}})
    sc.check_study_compatible(storage, "absent", space_b)  # no study: nothing to compare, none created
    assert optuna.study.get_all_study_names(storage) == ["s"]


def _hold_lock(url: str, name: str, ready, release) -> None:
    with sc.study_lock(url, name):
        ready.set()
        release.wait(60)  # never set: the test SIGKILLs this process while it holds the lock


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_study_lock_is_exclusive_and_dies_with_its_holder(backend, pg_database, tmp_path):
    url = pg_database if backend == "postgres" else f"sqlite:///{tmp_path / 'optuna.db'}"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(url, "s", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(TierHpoError, match="stayed locked"), sc.study_lock(url, "s", timeout_s=0.5):
            pass
        with sc.study_lock(url, "another-study", timeout_s=2):
            pass  # locks are per study
        os.kill(holder.pid, signal.SIGKILL)  # the OS / server releases a dead holder's lock
        holder.join(10)
        start = time.monotonic()
        with sc.study_lock(url, "s", timeout_s=10):
            pass
        assert time.monotonic() - start < 10
    finally:
        if holder.is_alive():  # never set() after the SIGKILL: the dead waiter would block it
            holder.kill()
        holder.join(10)
