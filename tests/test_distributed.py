"""Scale-out over PostgreSQL + an MLflow tracking server, each test in a fresh database dropped after it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing as mp
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import hpo_tiny
import optuna
import pg_fixtures
import pytest
import sqlalchemy
import yaml
from conftest import build_validated_tier
from hpo_tiny import tiny_data
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from pg_fixtures import database_exists, database_url, free_port, set_connections_allowed

from common.errors import TierHpoError
from common.redact import redact
from common.threads import available_cpus
from training.search import storage as sc
from training.search import storage_url
from training.search import workers as workers_module
from training.search.config import StorageConfig
from training.search.space import ParamConfig
from training.search.study import StudySpec, WorkerSettings, build_engine, open_study
from training.search.tracking import PARENT_ATTR, PARENT_TAG, RUN_ATTR, TRIAL_TAG
from training.search.workers import Backoff, is_connection_loss, plan_workers, run_workers

# Fixtures, used by parameter name.
postgres_server = pg_fixtures.postgres_server
pg_database = pg_fixtures.pg_database
mlflow_server_url = pg_fixtures.mlflow_server_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- URL checks and redaction (no server)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cret@db.example:5432/hpo", "postgresql://***@db.example:5432/hpo"),
        ("postgresql+psycopg://alice:p%40ss@h/hpo", "postgresql+psycopg://***@h/hpo"),
        ("postgresql://alice:p@ss@h/hpo", "postgresql://***@h/hpo"),
        ("postgresql://alice@h/hpo?password=s3cret&sslmode=require", "postgresql://***@h/hpo?password=***&sslmode=require"),
        ("postgresql://h/hpo?sslpassword=a&api_key=b&token=c&client_secret=d&x=1",
         "postgresql://h/hpo?sslpassword=***&api_key=***&token=***&client_secret=***&x=1"),
        ("postgresql://alice@h/hpo", "postgresql://***@h/hpo"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_redact_hides_user_info_and_secret_parameters(url, shown):
    assert redact(url) == shown
    assert redact(f"storage {url} failed") == f"storage {shown} failed"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "cannot parse"),
        ("postgresql://h:port/db", "port must be a number"),
        ("mysql://u@h/db", "unsupported storage backend 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "driver 'asyncpg' is not supported"),
        ("postgresql+psycopg2://u@h/db", "driver 'psycopg2' is not supported"),
        ("postgres://u@h/db", "write postgresql://"),
        ("postgresql://u@h", "names no database"),
        ("sqlite://", "in-memory"),
        ("sqlite:///relative/optuna.db", "relative SQLite path"),
        ("", "empty storage URL"),
    ],
)
def test_bad_storage_urls_are_one_line_errors(url, needle):
    with pytest.raises(TierHpoError) as info:
        storage_url.normalize_storage_url(url)
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
        storage_url.normalize_storage_url(url, from_params_file=True)
    assert "s3cret" not in str(info.value) and "~/.pgpass" in str(info.value)
    # Nothing is rewritten: the URL that Optuna, optuna-dashboard and mlflow server take as is.
    assert storage_url.normalize_storage_url(url) == url
    assert storage_url.normalize_storage_url("postgresql+psycopg://alice@h/hpo") == "postgresql+psycopg://alice@h/hpo"


@pytest.mark.postgres
def test_no_wait_on_postgresql_lasts_for_ever(pg_database, monkeypatch):
    """Every storage session carries server-side bounds, so a row lock held by a session that
    stopped mid-transaction ends the waiter's wait with an error the workers treat as a lost
    connection (back off, reconnect, resume) instead of holding the study for ever."""
    storage = sc.make_storage(pg_database, StorageConfig())
    with storage.engine.connect() as conn:
        shown = {name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                 for name in ("lock_timeout", "idle_in_transaction_session_timeout", "statement_timeout")}
    assert shown == {"lock_timeout": "2min", "idle_in_transaction_session_timeout": "5min",
                     "statement_timeout": "10min"}
    with sc._lock_engine(sc.normalize_storage_url(pg_database)).connect() as conn:
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "2min"

    monkeypatch.setattr(sc, "PG_SESSION_OPTIONS", "-c lock_timeout=1s")
    quick = sc.make_storage(pg_database, StorageConfig())
    study_id = quick.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "locked")
    holder = pg_fixtures._admin_connection(pg_database)
    holder.autocommit = False
    try:
        holder.execute("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE")  # and then it stops, mid-transaction
        started = time.monotonic()
        with pytest.raises(optuna.exceptions.StorageInternalError) as info:  # Optuna wraps the driver's error
            quick.set_study_user_attr(study_id, "k", "v")
        assert time.monotonic() - started < 30
        assert isinstance(info.value.__cause__ or info.value.__context__, sqlalchemy.exc.OperationalError)
        assert "lock timeout" in str(info.value.__cause__ or info.value.__context__)
        assert is_connection_loss(info.value)
    finally:
        holder.close()
    quick.set_study_user_attr(study_id, "k", "v")  # the lock gone, the same storage carries on
    assert quick.get_study_user_attrs(study_id) == {"k": "v"}


def test_plan_workers_splits_cores_into_disjoint_pinned_sets():
    plans = plan_workers(2, cpus=[0, 1, 2, 3, 4])
    assert [(p.index, p.threads, p.cpus) for p in plans] == [(0, 2, (0, 1)), (1, 2, (2, 3))]
    assert [p.threads for p in plan_workers(2, cpus=[0, 1], threads=3)] == [3, 3]
    over = plan_workers(3, cpus=[0, 1], index_offset=10)
    assert [(p.index, p.threads, p.cpus) for p in over] == [(10, 1, None), (11, 1, None), (12, 1, None)]
    with pytest.raises(TierHpoError, match="--workers must be >= 1"):
        plan_workers(0)


def test_a_refused_connection_counts_as_connection_loss_and_a_bug_does_not():
    engine = sqlalchemy.create_engine(f"postgresql://u@127.0.0.1:{free_port()}/x",
                                      connect_args={"connect_timeout": 2})
    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        engine.connect()
    assert is_connection_loss(info.value)
    try:
        try:
            raise info.value
        except sqlalchemy.exc.OperationalError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_connection_loss(wrapped)  # found through the cause chain
    assert not is_connection_loss(ValueError("a bug"))
    with pytest.raises(sc.StorageUnavailable):
        sc.check_storage_reachable(f"postgresql://u@127.0.0.1:{free_port()}/x")


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
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_study_lock_is_exclusive_and_dies_with_its_holder(backend, pg_database, tmp_path):
    url = pg_database if backend == "postgres" else f"sqlite:///{tmp_path / 'optuna.db'}"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=pg_fixtures.hold_study_lock, args=(url, "s", ready, release))
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


# ---------------------------------------------------------------- workers on a real study

SECRET = "not-a-real-secret"  # trust auth ignores it; it must never show up anywhere


def tiny_spec(data, **over) -> StudySpec:
    """The shared tiny study with 4 forced configs, so both workers race for forced trials."""
    return hpo_tiny.tiny_spec(data, **{"forced": 4, **over})


def settings(tracking_uri: str | None = None) -> WorkerSettings:
    return WorkerSettings(storage=StorageConfig(heartbeat_interval=1, grace_period=10, poll_seconds=0.5),
                          log_every_s=0.0, tracking_uri=tracking_uri)


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


def load(url: str, spec: StudySpec) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=storage_url.normalize_storage_url(url))


def trial_runs(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=1000)


def running_runs(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=1000)


def assert_exact_study(study: optuna.Study, n: int) -> list:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    return complete


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_fill_one_study_exactly_with_one_parent_run(pg_database, mlflow_server_url, capfd):
    data = tiny_data()
    spec = tiny_spec(data, forced=4)
    url = with_password(pg_database)
    result = run_workers(spec, data, 8, url, n_workers=2, settings=settings(mlflow_server_url), plots=False)

    assert [e.exitcode for e in result.report.exits] == [0, 0]
    assert [p.threads for p in result.report.plans] == [max(1, len(available_cpus()) // 2)] * 2
    study = load(pg_database, spec)
    complete = assert_exact_study(study, 8)
    assert [t.number for t in study.get_trials()] == list(range(8))
    assert len({t.user_attrs["worker"]["pid"] for t in complete}) == 2  # both processes ran trials

    forced = [t for t in complete if t.user_attrs["phase"] == "forced"]
    assert sorted(t.user_attrs["forced_index"] for t in forced) == [0, 1, 2, 3]
    engine = build_engine(spec)
    assert sorted(map(str, (t.params for t in forced))) == sorted(map(str, engine.forced))
    # coverage lives in the storage: the summary made by the parent process counts both workers' trials
    coverage = engine.tracker.from_trials(study.get_trials())
    assert coverage.n_points == 8 and result.metrics["hpo/coverage"] == pytest.approx(coverage.overall)

    client = MlflowClient(mlflow_server_url)
    parent_id = study.user_attrs[PARENT_ATTR]
    assert result.parent_run_id == parent_id and client.get_run(parent_id).info.status == "FINISHED"
    runs = trial_runs(client, parent_id)
    assert sorted(int(r.data.tags[TRIAL_TAG]) for r in runs) == list(range(8))
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_id for r in runs} == {t.user_attrs[RUN_ATTR] for t in complete}
    assert not running_runs(client, parent_id)

    # the password never reaches MLflow, best.json or the console
    logged = [client.get_run(parent_id), *runs]
    assert all(SECRET not in str(r.data.params) + str(r.data.tags) for r in logged)
    assert SECRET not in str(result.best)
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def _kill_one_worker_mid_trial(url: str, spec: StudySpec, seen: dict, stop: threading.Event) -> None:
    """Once 2 trials are COMPLETE, SIGKILL the owner of the next trial to start, as soon as its run
    exists. A trial already running by then may be about to finish: killing it could land after
    its COMPLETE, which would test nothing."""
    engine = sqlalchemy.create_engine(storage_url.normalize_storage_url(url))
    while True:  # leave creating tables and the study to the workers: wait for the study's row
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError), engine.connect() as conn:
            if conn.execute(sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"),
                            {"n": spec.study_name}).first():
                break
        time.sleep(0.2)
    engine.dispose()
    storage = optuna.storages.RDBStorage(storage_url.normalize_storage_url(url), skip_table_creation=True)
    while not stop.is_set():
        try:
            study_id = storage.get_study_id_from_name(spec.study_name)
        except KeyError:
            time.sleep(0.2)
            continue
        trials = storage.get_all_trials(study_id)
        complete = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
        if len(complete) < 2:
            time.sleep(0.05)
            continue
        if "old" not in seen:
            seen["old"] = {t.number for t in trials if t.state != TrialState.WAITING}
        target = next((t for t in trials if t.state == TrialState.RUNNING and RUN_ATTR in t.user_attrs
                       and t.number not in seen["old"]), None)
        if target is not None:
            os.kill(target.user_attrs["worker"]["pid"], signal.SIGKILL)
            seen.update(number=target.number, pid=target.user_attrs["worker"]["pid"],
                        run_id=target.user_attrs[RUN_ATTR], complete=complete)
            return
        time.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_of_a_worker_mid_trial_loses_nothing_and_leaves_no_run_running(pg_database, mlflow_server_url):
    data = tiny_data()
    # 6 epochs: a trial outlasts the killer's poll by a wide margin, even on a loaded machine
    spec = tiny_spec(data, forced=2)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, max_epochs=6, patience=6))
    seen: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_worker_mid_trial, args=(pg_database, spec, seen, stop), daemon=True)
    killer.start()
    try:
        result = run_workers(spec, data, 8, pg_database, n_workers=2, settings=settings(mlflow_server_url),
                             plots=False)
    finally:
        stop.set()
        killer.join(10)
    assert seen, "no worker was killed: the trials ended before the killer saw one running"
    exits = {e.pid: e.exitcode for e in result.report.exits}
    assert exits.pop(seen["pid"]) == -signal.SIGKILL and list(exits.values()) == [0]

    study = load(pg_database, spec)
    complete = assert_exact_study(study, 8)
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[seen["number"]].state == TrialState.FAIL  # failed by the survivor ...
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == seen["number"]]
    assert len(retry) == 1  # ... and re-queued, then run once more to completion
    assert retry[0].params == by_number[seen["number"]].params
    for number, value in seen["complete"].items():  # no finished trial lost or changed
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value

    client = MlflowClient(mlflow_server_url)
    parent_id = study.user_attrs[PARENT_ATTR]
    assert not running_runs(client, parent_id)
    assert client.get_run(seen["run_id"]).info.status == "KILLED"
    finished = [r for r in trial_runs(client, parent_id) if r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted(t.user_attrs[RUN_ATTR] for t in complete)
    assert client.get_run(parent_id).info.status == "FINISHED"


def _cut_storage_after(url: str, spec: StudySpec, n_complete: int, seen: dict, stop: threading.Event,
                       outage_s: float | None) -> None:
    """Once ``n_complete`` trials are COMPLETE, cut every connection to the study database and refuse
    new ones for ``outage_s`` seconds (None: until ``stop``)."""
    name = sqlalchemy.engine.make_url(url).database
    engine = sqlalchemy.create_engine(storage_url.normalize_storage_url(url), poolclass=sqlalchemy.pool.NullPool)
    query = sqlalchemy.text("SELECT t.number, t.state, v.value FROM trials t JOIN studies s USING (study_id) "
                            "LEFT JOIN trial_values v USING (trial_id) WHERE s.study_name = :n")
    try:
        while not stop.is_set():
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError), engine.connect() as conn:
                rows = conn.execute(query, {"n": spec.study_name}).all()
                complete = {number: value for number, state, value in rows if state == "COMPLETE"}
                if len(complete) >= n_complete and any(state == "RUNNING" for _, state, _ in rows):
                    seen["complete"] = complete
                    break
            time.sleep(0.1)
        else:
            return
    finally:
        engine.dispose()
    set_connections_allowed(name, False)
    seen["cut_at"] = time.monotonic()
    try:
        stop.wait(outage_s)
    finally:
        set_connections_allowed(name, True)
        seen["back_at"] = time.monotonic()


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_ride_out_a_database_outage_with_backoff(pg_database, isolated_stores, monkeypatch):
    data = tiny_data()
    spec = tiny_spec(data, forced=2)
    # The workers' forkserver keeps the environment it started with; start it (if no earlier test
    # did) with a tracking URI that is NOT this test's: workers must still log where we point now.
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/nowhere")
        workers_module._context()
        multiprocessing.forkserver.ensure_running()
    seen: dict = {}
    stop = threading.Event()
    cutter = threading.Thread(target=_cut_storage_after, args=(pg_database, spec, 2, seen, stop, 6.0), daemon=True)
    cutter.start()
    try:
        result = run_workers(spec, data, 8, pg_database, n_workers=2, settings=settings(),
                             backoff=Backoff(tries=10, first_s=0.5, max_s=3.0), plots=False)
    finally:
        stop.set()
        cutter.join(30)
    assert "cut_at" in seen, "the outage never started"
    assert [e.exitcode for e in result.report.exits] == [0, 0]  # both came back after the outage
    study = load(pg_database, spec)
    complete = assert_exact_study(study, 8)
    by_number = {t.number: t for t in study.get_trials()}
    for number, value in seen["complete"].items():
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value
    assert all(t.datetime_complete is not None for t in complete)
    client = MlflowClient()  # this test's store, from MLFLOW_TRACKING_URI
    assert not running_runs(client, study.user_attrs[PARENT_ATTR])
    finished = [r for r in trial_runs(client, study.user_attrs[PARENT_ATTR]) if r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted(t.user_attrs[RUN_ATTR] for t in complete)


@pytest.mark.postgres
@pytest.mark.slow
def test_an_outage_longer_than_the_backoff_stops_workers_clearly_and_a_rerun_completes(
        pg_database, isolated_stores, capfd):
    data = tiny_data()
    spec = tiny_spec(data, forced=2)
    url = with_password(pg_database)
    seen: dict = {}
    stop = threading.Event()
    cutter = threading.Thread(target=_cut_storage_after, args=(url, spec, 2, seen, stop, None), daemon=True)
    cutter.start()
    try:
        with pytest.raises(TierHpoError) as info:
            run_workers(spec, data, 8, url, n_workers=2, settings=settings(),
                        backoff=Backoff(tries=2, first_s=0.2, max_s=0.4), plots=False)
    finally:
        stop.set()
        cutter.join(30)
    message = str(info.value)
    assert "unreachable" in message and "lost the study storage" in message and "\n" not in message
    assert SECRET not in message + "".join(capfd.readouterr())

    result = run_workers(spec, data, 8, url, n_workers=2, settings=settings(), plots=False)  # resume
    study = load(pg_database, spec)
    complete = assert_exact_study(study, 8)
    by_number = {t.number: t for t in study.get_trials()}
    for number, value in seen["complete"].items():  # nothing finished before the outage was lost
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value
    assert result.metrics["hpo/n_complete"] == 8
    assert not running_runs(MlflowClient(), study.user_attrs[PARENT_ATTR])
    assert len(complete) == 8


@pytest.mark.postgres
def test_run_workers_refuses_bad_storage_before_creating_anything(postgres_server, tmp_path):
    data = tiny_data()
    spec = tiny_spec(data)
    missing = "tierhpo_t_missing_db_run_workers"
    cases = [
        ("postgresql://postgres@127.0.0.1:notaport/x", "port must be a number"),
        ("mysql://u@h/db", "unsupported storage backend"),
        (f"sqlite:///{tmp_path / 'nope' / 'optuna.db'}", "does not exist; create it first"),
        (database_url(missing), f"database '{missing}' does not exist"),
        (f"postgresql://postgres@127.0.0.1:{free_port()}/x", "cannot reach the study storage"),
    ]
    for url, needle in cases:
        with pytest.raises(TierHpoError) as info:
            run_workers(spec, data, 8, url, n_workers=2, settings=settings())
        assert needle in str(info.value) and "\n" not in str(info.value)
    assert not database_exists(missing) and not (tmp_path / "nope").exists()
    assert not list(tmp_path.rglob("*.db"))  # no MLflow or Optuna store was created either


@pytest.mark.postgres
def test_joining_a_study_with_another_search_space_is_refused_and_creates_nothing(pg_database, isolated_stores):
    data = tiny_data()
    spec = tiny_spec(data)
    with pytest.raises(TierHpoError, match="holds no Optuna study yet"):
        run_workers(spec, data, 8, pg_database, n_workers=2, settings=settings(), join=True)
    engine = sqlalchemy.create_engine(storage_url.normalize_storage_url(pg_database))
    assert sqlalchemy.inspect(engine).get_table_names() == []  # --join did not even create tables
    engine.dispose()

    open_study(spec, pg_database, settings())  # the first machine created the study
    wider = hpo_tiny.space(lr=ParamConfig("float", 1e-4, 1e-2, log=True))
    other = tiny_spec(data, space=wider)
    with pytest.raises(TierHpoError) as info:
        run_workers(other, data, 8, pg_database, n_workers=2, settings=settings(), join=True)
    message = str(info.value)
    assert f"study {spec.study_name}" in message and "different search space" in message
    assert "space (lr)" in message and "\n" not in message
    storage = optuna.storages.RDBStorage(storage_url.normalize_storage_url(pg_database))
    assert optuna.study.get_all_study_names(storage) == [spec.study_name]
    assert not storage.get_all_trials(storage.get_study_id_from_name(spec.study_name),
                                      states=(TrialState.RUNNING, TrialState.COMPLETE))


# ---------------------------------------------------------------- the CLI

@pytest.mark.postgres
@pytest.mark.slow
def test_cli_workers_fill_the_study_and_join_refuses_other_params(repo_copy, pg_database, isolated_stores):
    """`tierhpo hpo --workers 2` on the real a20 tier fills a PostgreSQL study; `--join` from a
    checkout with another search space stops with one line and changes nothing."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    params_file = repo_copy / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"].update(max_epochs=2, patience=2, progress=False)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    build_validated_tier(repo_copy, "a20", env)
    url = with_password(pg_database)
    command = ["tierhpo", "hpo", "--tier", "a20", "--budget", "20K", "--horizon", "1", "--trials", "4",
               "--forced", "2", "--quiet", "--storage", url]

    first = subprocess.run([*command, "--workers", "2"], cwd=repo_copy, env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 worker(s) x 1 thread(s)" in first.stderr and "worker 1:" in first.stderr
    assert SECRET not in first.stdout + first.stderr
    storage = optuna.storages.RDBStorage(storage_url.normalize_storage_url(pg_database))
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    best = json.loads((repo_copy / "results" / "hpo" / "a20" / "20K" / "h1" / "best.json").read_text())
    assert best["study_name"] == name and best["value"] == study.best_value

    again = subprocess.run([*command, "--join"], cwd=repo_copy, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]  # same params: joins, nothing left to run
    assert len(study.get_trials()) == len(optuna.load_study(study_name=name, storage=storage).get_trials())

    params["hpo"]["space"]["lr"]["low"] /= 10
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    other = subprocess.run([*command, "--join"], cwd=repo_copy, env=env, capture_output=True, text=True, timeout=600)
    assert other.returncode != 0
    (line,) = other.stderr.strip().splitlines()
    assert f"study {name}" in line and "space (lr)" in line and SECRET not in line
    assert optuna.study.get_all_study_names(storage) == [name]
