"""One ``postgresql://`` URL, four clients: tierhpo, Optuna, optuna-dashboard and ``mlflow server``.

SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3, the driver the project installs; nothing in
tierhpo rewrites the URL, so what a user types into one tool works in the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pg_fixtures
import pytest
from sqlalchemy.engine import make_url

from training.search import storage as sc
from training.search import storage_url

postgres_server = pg_fixtures.postgres_server
pg_database = pg_fixtures.pg_database

pytestmark = pytest.mark.postgres


def test_fixture_urls_are_plain_postgresql(pg_database):
    assert make_url(pg_database).drivername == "postgresql"


def test_tierhpo_and_optuna_take_the_same_url(pg_database):
    assert storage_url.normalize_storage_url(pg_database) == pg_database  # nothing rewritten
    assert sc.check_storage_reachable(pg_database) == pg_database
    sc.ensure_schema(pg_database)
    study = optuna.create_study(study_name="same-url", storage=pg_database, direction="maximize")
    study.set_metric_names(["val/auc"])
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="same-url", storage=pg_database)
    assert len(again.trials) == 2 and again.metric_names == ["val/auc"]
    engine = optuna.storages.RDBStorage(pg_database).engine
    assert engine.dialect.driver == "psycopg"


def _get_json(url: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_optuna_dashboard_takes_the_same_url(pg_database, tmp_path):
    optuna.create_study(study_name="dash-url", storage=pg_database).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    port = pg_fixtures.free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("optuna-dashboard")), pg_database,
             "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref", "--quiet"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = _get_json(f"http://127.0.0.1:{port}/api/studies")
        assert proc.poll() is None, log.read_text()
        assert [s["study_name"] for s in body["study_summaries"]] == ["dash-url"]
    finally:
        pg_fixtures._stop(proc)


def test_mlflow_server_takes_the_same_url(postgres_server, tmp_path):
    import mlflow

    with pg_fixtures.fresh_database("mlurl") as backend, \
            pg_fixtures.mlflow_server(backend, tmp_path / "art") as url:
        assert make_url(backend).drivername == "postgresql"
        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.create_experiment("same-url")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "val/auc", 0.6)
        assert client.get_run(run.info.run_id).data.metrics == {"val/auc": 0.6}
