"""No secret of a storage URL reaches a console line, a written file or an MLflow param/tag.

A tiny real study (``tierhpo hpo`` as a subprocess, 2 forced trials, 2 epochs, 1 refit seed)
runs with an Optuna storage URL and an ``MLFLOW_TRACKING_URI`` that carry a password in the
user info and in ``?password=`` / ``&sslpassword=`` query parameters. Then every output is
grepped for it: the captured stdout+stderr of every command, every file under results/,
reports/ and the artifact store, and every param and tag of every MLflow run and experiment.

SQLite (MLflow's URI) takes the query parameters through ``uri=true`` (SQLite ignores the
unknown ones); PostgreSQL with trust auth ignores the password, so both URLs really connect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_ohlcv
from shrink import shrink

SECRET = "hunter2secret"
SECRET_QUERY = f"password={SECRET}&sslpassword={SECRET}"

pytestmark = pytest.mark.slow


def _tierhpo(*args: str) -> list[str]:
    return [sys.executable, "-c", "from pipelines.cli import app; app()", *args]


def _project(root: Path) -> Path:
    """params.yaml (the real one, shrunk; tiny data; no degenerate-trial rule), dvc.yaml, raw CSV."""
    root.mkdir(parents=True)
    params = shrink(data={"horizons": [1, 2], "context_len": 8, "min_windows_per_split": 20},
                    hpo={"refit_seeds": 1},
                    metrics={"pred_std_min": 0.0, "skill_min": -100.0})  # every trial counts: best.json is written
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    make_ohlcv(800).to_csv(root / "src.csv", index=False)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def _run_study_and_collect(root: Path, storage: str, tracking_uri: str) -> str:
    """Build a50, run the study; return all console output (and assert each command succeeded)."""
    env = {**os.environ, "TIERHPO_ROOT": str(root), "TIERHPO_STORE_DIR": str(root / "stores"),
           "MLFLOW_TRACKING_URI": tracking_uri, "TIERHPO_OPTUNA_STORAGE": storage,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    console = []
    for args in (["ingest", "--source", "src.csv"], ["tiers", "--tier", "a50"], ["validate", "--tier", "a50"],
                 ["hpo", "--tier", "a50", "--budget", "20K", "--horizon", "1", "--trials", "2", "--storage", storage]):
        done = subprocess.run(_tierhpo(*args), cwd=root, env=env, capture_output=True, text=True, timeout=600)
        console.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"tierhpo {' '.join(args[:3])} failed:\n{done.stdout}\n{done.stderr}"
    return "\n".join(console)


def _assert_nothing_leaks(root: Path, console: str, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    assert SECRET not in console, [line for line in console.splitlines() if SECRET in line]
    assert "study a50-20K-h1" in console  # the storage line is there

    written = [p for folder in ("results", "reports", "stores/mlartifacts") for p in (root / folder).rglob("*")
               if p.is_file()]
    assert any(p.name == "best.json" for p in written) and any(p.name == "trials.csv" for p in written)
    leaking = [str(p.relative_to(root)) for p in written if SECRET.encode() in p.read_bytes()]
    assert not leaking, leaking

    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) >= 3  # parent, trials, refit
    assert any("storage" in r.data.params for r in runs)
    for experiment in experiments:
        assert SECRET not in repr(experiment.tags), experiment.name
    for run in runs:
        values = {**run.data.params, **run.data.tags}
        leaks = {k: v for k, v in values.items() if SECRET in k or SECRET in str(v)}
        assert not leaks, (run.info.run_name, leaks)


def test_sqlite_tracking_uri_with_secret_query_params_leaks_nowhere(tmp_path):
    """The Optuna storage stays a plain absolute SQLite path (the storage check refuses ``file:``
    URIs); the MLflow URI carries the secrets as SQLite URI parameters."""
    root = _project(tmp_path / "proj")
    stores = root / "stores"
    stores.mkdir()
    storage = f"sqlite:///{stores / 'optuna.db'}"
    tracking = f"sqlite:///file:{stores / 'mlflow.db'}?mode=rwc&uri=true&{SECRET_QUERY}"
    console = _run_study_and_collect(root, storage, tracking)
    _assert_nothing_leaks(root, console, tracking)


@pytest.mark.postgres
def test_postgres_urls_with_secret_user_info_and_query_leak_nowhere(tmp_path):
    from pg_fixtures import fresh_database, postgres_unavailable_reason

    reason = postgres_unavailable_reason()
    if reason:
        if os.environ.get("TIERHPO_SKIP_POSTGRES") == "1":
            pytest.skip(reason)
        pytest.fail(reason)
    from sqlalchemy.engine import make_url

    def with_secrets(url: str) -> str:
        plain = make_url(url)
        return f"postgresql://{plain.username}:{SECRET}@{plain.host}:{plain.port or 5432}/{plain.database}?{SECRET_QUERY}"

    root = _project(tmp_path / "proj")
    with fresh_database("secrets_optuna") as optuna_db, fresh_database("secrets_mlflow") as mlflow_db:
        storage, tracking = with_secrets(optuna_db), with_secrets(mlflow_db)
        console = _run_study_and_collect(root, storage, tracking)
        assert "postgresql://***@" in console and "sslpassword=***" in console  # printed, redacted
        _assert_nothing_leaks(root, console, tracking)
