"""The one stage-run helper (common/mlflow_runs.py), on a real SQLite MLflow store."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from common import mlflow_runs
from common.errors import TierHpoError


@pytest.fixture
def client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow_runs, "_taken", {})
    return MlflowClient(uri)


def test_every_stage_run_of_a_process_nests_under_mlflow_run_id_and_fluent_runs_nest_under_it(client, monkeypatch):
    outer_exp = client.create_experiment("outer", artifact_location="/tmp/outer-artifacts")
    outer = client.create_run(outer_exp, run_name="mlflow-run").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    exp = client.create_experiment("tier")
    first = mlflow_runs.create_stage_run(client, exp, "promote", "promote-20K")
    second = mlflow_runs.create_stage_run(client, exp, "promote", "promote-60K")
    for run in (first, second):
        assert run.data.tags[mlflow_runs.PARENT_TAG] == outer and run.info.experiment_id == outer_exp
    # the fluent API now nests under the stage run, not under (or into) the outer run
    with mlflow.start_run(run_id=first.info.run_id), mlflow.start_run(run_name="cell", nested=True) as cell:
        mlflow.log_param("model.n_features", 25)
    assert client.get_run(cell.info.run_id).data.tags[mlflow_runs.PARENT_TAG] == first.info.run_id
    assert "model.n_features" not in client.get_run(outer).data.params


def test_a_bad_mlflow_run_id_is_one_line_and_a_stage_run_always_ends(client, monkeypatch):
    exp = client.create_experiment("tier")
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(TierHpoError, match="MLFLOW_RUN_ID=0+ is not a run of the tracking store"):
        mlflow_runs.create_stage_run(client, exp, "select", "select-h1")
    monkeypatch.delenv("MLFLOW_RUN_ID")
    with pytest.raises(RuntimeError), mlflow_runs.stage_run(client, exp, "select", "select-h1") as run_id:
        raise RuntimeError("boom")
    assert client.get_run(run_id).info.status == "FAILED"
    with mlflow_runs.stage_run(client, exp, "select", "select-h1") as ok:
        pass
    assert client.get_run(ok).info.status == "FINISHED"


def test_log_batch_splits_at_mlflows_limits_in_as_few_requests_as_they_allow(client):
    """250 params, 150 tags and 1,200 metrics: more params than one request may carry (100). All
    arrive, in 3 requests (the params' own lower bound), each within the limits. A SQLite store
    takes an oversized request; an MLflow tracking server refuses it, so the count is checked."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = client.create_run(client.create_experiment("tier")).info.run_id
    sent = []
    real = client.log_batch

    def counting(run_id, **kwargs):
        sent.append({k: len(v) for k, v in kwargs.items()})
        return real(run_id, **kwargs)

    client.log_batch = counting
    mlflow_runs.log_batch(client, run_id,
                          metrics=[Metric(f"val/m{i}", float(i), 0, 0) for i in range(1200)],
                          params=[Param(f"p{i}", str(i)) for i in range(250)],
                          tags=[RunTag(f"t{i}", str(i)) for i in range(150)])
    data = client.get_run(run_id).data
    assert len(data.params) == 250 and len(data.metrics) == 1200
    assert {f"t{i}" for i in range(150)} <= set(data.tags)
    assert len(sent) == 3
    assert all(s["params"] <= 100 and s["tags"] <= 100 and sum(s.values()) <= 1000 for s in sent)
