"""The HPO engine end to end with the real trainer, a real SQLite Optuna storage and a real MLflow
SQLite store (tiny data, tiny budget, 1-2 epochs).

One study (``finished``) is run once per module and inspected by several tests; it uses its own
stores under a module temp dir, passed explicitly (the per-test env stores of conftest stay unused).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from hpo_tiny import (  # noqa: F401  (fixtures are used by name)
    SPACE,
    child_runs,
    fresh_stores_from_templates,
    settings,
    store_templates,
    stores_from_templates,
    tiny_data,
    tiny_spec,
)
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from common.errors import TierHpoError
from training.dataset import TierData
from training.model import ModelConfig, PatchTSTClassifier
from training.search import waste
from training.search.objective import owner_gone, process_start, worker_info
from training.search.results import write_outputs
from training.search.space import ParamConfig, SearchSpace
from training.search.study import open_study, run_study
from training.search.worker import _hpo_view

optuna.logging.set_verbosity(optuna.logging.WARNING)

BEST_KEYS = {"study_name", "storage", "tier", "budget", "budget_params", "horizon", "seed", "trial_number",
             "mlflow_run_id", "parent_run_id", "experiment_id", "params", "model_config", "train_config",
             "n_params", "metrics", "raw_version", "tier_version", "git_commit"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, store_templates):  # noqa: F811
    """A 3-trial study (2 forced) plus an enqueued duplicate of trial 0, run to 4 COMPLETE trials."""
    root = tmp_path_factory.mktemp("hpo")
    storage, mlflow_uri = stores_from_templates(store_templates, root)
    data = tiny_data()
    spec = tiny_spec(data)
    run_study(spec, data, 3, storage, settings=settings(mlflow_uri), plots=False)
    handle = open_study(spec, storage, settings(mlflow_uri))
    handle.study.enqueue_trial(handle.study.trials[0].params)
    result = run_study(spec, data, 4, storage, settings=settings(mlflow_uri))
    outputs = write_outputs(result, root / "out")
    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    return {"spec": spec, "storage": storage, "client": MlflowClient(mlflow_uri), "result": result,
            "outputs": outputs, "study": study, "handle": handle}


def test_study_names_its_objective_and_the_experiment_is_of_the_ml_kind(finished):
    assert finished["study"].metric_names == ["val/auc"]
    exp = finished["client"].get_experiment(finished["result"].experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_forced_trials_run_first_and_are_tagged(finished):
    trials = finished["study"].get_trials()
    assert [t.user_attrs["phase"] for t in trials[:2]] == ["forced", "forced"]
    assert [t.user_attrs["forced_index"] for t in trials[:2]] == [0, 1]
    assert all(t.user_attrs["phase"] != "forced" for t in trials[2:])
    assert trials[0].params == finished["handle"].engine.forced[0]


def test_resume_reaches_exactly_the_target_and_keeps_finished_trials(finished):
    trials = finished["study"].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert finished["result"].metrics["hpo/n_complete"] == 4


def test_duplicate_is_recorded_not_retrained(finished):
    dup = finished["study"].get_trials()[3]
    original = finished["study"].get_trials()[0]
    assert dup.user_attrs["wasted"] == waste.DUPLICATE and dup.user_attrs["info"]["duplicate_of"] == 0
    assert dup.user_attrs["info"]["epochs"] == 0 and dup.value == original.value
    assert "model_config" not in dup.user_attrs["info"]  # nothing was built or trained
    run = finished["client"].get_run(dup.user_attrs["mlflow_run_id"])
    assert run.data.tags["wasted_reason"] == "duplicate" and "val/auc" not in run.data.metrics
    assert finished["result"].metrics["hpo/wasted/duplicate"] == pytest.approx(0.25)
    assert finished["result"].best["trial_number"] != 3


def test_one_parent_with_a_nested_run_per_trial(finished):
    client, result = finished["client"], finished["result"]
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    for key in ("tier", "budget", "horizon", "study_name", "git_commit", "raw_version"):
        assert parent.data.tags[key], key
    assert "data_version" not in parent.data.tags and "data_version" not in parent.data.params
    assert parent.data.params["tier_version"] == finished["spec"].tier_version  # the tier files' md5s, not raw data
    assert parent.data.tags["study_name"] == finished["spec"].study_name
    assert "hpo/wasted_fraction" in parent.data.metrics and "best/val/auc" in parent.data.metrics
    assert {"coverage.json", "coverage.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    with open(client.download_artifacts(parent.info.run_id, "coverage.md")) as table:
        assert "| axis |" in table.read()
    assert not [k for k in parent.data.metrics if k.startswith("coverage/")]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png", "plots/optuna_plots.html"} <= plots

    runs = child_runs(client, result.parent_run_id)
    trials = finished["study"].get_trials()
    assert len(runs) == 4
    assert all(r.info.status == "FINISHED" for r in runs)  # all four trials are COMPLETE
    for run in runs:
        tags = run.data.tags
        assert {"phase", "trial_number", "state", "wasted_reason"} <= set(tags)
        assert tags["state"] == "COMPLETE"
        # coverage is a param set (and a JSON artifact), never a metric
        assert not [k for k in run.data.metrics if k.startswith("coverage")]
        assert 0.0 <= float(run.data.params["coverage.overall"]) <= 1.0
        assert "coverage.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        if tags["wasted_reason"] == "duplicate":
            assert not [k for k in run.data.metrics if k.startswith(("val/", "best/"))]
            continue
        assert "n_params" not in run.data.metrics
        assert abs(int(run.data.params["n_params"]) - 5000) <= 500  # the real count, within the budget
        trial = trials[int(tags["trial_number"])]
        epochs = trial.user_attrs["info"]["epochs"]
        # per-epoch curve: exactly one point per epoch, at step=epoch; no summary point mixed in
        steps = client.get_metric_history(run.info.run_id, "val/auc")
        assert sorted(m.step for m in steps) == list(range(1, epochs + 1)), [m.step for m in steps]
        # best-epoch summary under its own keys: Optuna's value, what the MLflow table sorts and searches
        for name in ("val/auc", "val/brier", "val/log_loss_skill", "val/pred_std", "val/ece"):
            assert math.isfinite(run.data.metrics[f"best/{name}"]), name
            assert len(client.get_metric_history(run.info.run_id, f"best/{name}")) == 1, name
        assert run.data.metrics["best/val/auc"] == pytest.approx(trial.user_attrs["metrics"]["val/auc"])
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
        assert client.get_metric_history(run.info.run_id, "train/loss")


def test_outputs_follow_the_contract(finished):
    outputs, result = finished["outputs"], finished["result"]
    best = json.loads(outputs["best.json"].read_text())
    assert set(best) >= BEST_KEYS
    assert best["study_name"] == finished["spec"].study_name and best["budget_params"] == 5000
    assert best["metrics"]["val/auc"] == pytest.approx(best["value"])
    assert "://" in best["storage"] and "@" not in best["storage"]
    state = torch.load(outputs["model.pt"], weights_only=True)
    model = PatchTSTClassifier(ModelConfig(**best["model_config"]))
    model.load_state_dict(state)  # the best trial's weights, for its solved config
    assert sum(p.numel() for p in model.parameters()) == best["n_params"]
    metrics = json.loads(outputs["metrics.json"].read_text())
    assert metrics["hpo/n_complete"] == 4 and metrics["val/auc"] == pytest.approx(best["value"])
    assert set(f"hpo/wasted/{r}" for r in waste.REASONS) <= set(metrics)
    rows = pd.read_csv(outputs["trials.csv"])
    assert list(rows["number"]) == [0, 1, 2, 3] and list(rows["phase"][:2]) == ["forced", "forced"]
    assert result.rows[3]["wasted"] == "duplicate"


def test_coverage_snapshot_in_the_study_matches_the_storage(finished):
    study, handle = finished["study"], finished["handle"]
    assert study.user_attrs["coverage"] == handle.engine.tracker.from_trials(study.trials).to_json()
    last = study.get_trials()[-1]
    assert last.user_attrs["info"]["coverage"]["coverage/overall"] == pytest.approx(
        study.user_attrs["coverage"]["overall"])


class _NoTestSplit(dict):
    def __getitem__(self, key):
        if key == "test":
            raise AssertionError("HPO read the test split")
        return super().__getitem__(key)


def test_the_test_split_is_never_read():
    data = tiny_data()
    poisoned_rows = np.zeros(len(data.features), dtype=bool)
    poisoned_rows[data.split_ends["test"].min() - data.context_len + 1:] = True
    features = data.features.copy()
    features[poisoned_rows] = np.nan  # any use of a test window would make every metric NaN
    poisoned = TierData(features, data.labels, data.dates, data.feature_names, data.context_len, data.horizon,
                        _NoTestSplit(data.split_ends), data.mean, data.std, data.tier)
    view = _hpo_view(poisoned)
    assert set(view.split_ends) == {"train", "val"} and not np.isnan(view.features).any()
    result = run_study(tiny_spec(data, forced=1), poisoned, 1, settings=settings(), plots=False)
    assert math.isfinite(result.best["metrics"]["val/auc"])


def test_study_identity_and_storage_errors(tmp_path):
    data = tiny_data()
    spec = tiny_spec(data)
    assert spec.study_name.startswith("a20-5K-h1-")
    assert tiny_spec(data).study_name == spec.study_name
    assert tiny_spec(data, tier_version="other").study_name != spec.study_name
    assert tiny_spec(data, seed=1).study_name != spec.study_name
    narrower = SearchSpace.from_config({**{p.name: ParamConfig(**{**p.to_json(), "type": p.kind})
                                           for p in SPACE.params if p.name != "lr"},
                                        "lr": ParamConfig("float", 1e-3, 5e-3, log=True)})
    assert tiny_spec(data, space=narrower).study_name != spec.study_name
    assert tiny_spec(data, budget="5000").study_name == spec.study_name  # budgets are canonicalised
    with pytest.raises(TierHpoError, match="cannot reach the study storage"):
        open_study(spec, "postgresql://nobody@127.0.0.1:1/none", settings())
    with pytest.raises(TierHpoError, match="relative SQLite path"):
        open_study(spec, "sqlite:///relative.db", settings())
    with pytest.raises(TierHpoError, match="neither architecture parameters"):
        tiny_spec(data, space=SearchSpace.from_config({"momentum": ParamConfig("float", 0.1, 0.9)}))
    handle = open_study(spec, f"sqlite:///{tmp_path / 'o.db'}", settings())
    handle.study.set_user_attr("tierhpo_spec", {**handle.study.user_attrs["tierhpo_spec"], "seed": 99})
    with pytest.raises(TierHpoError, match=r"exists with different settings \(seed\)"):
        open_study(spec, f"sqlite:///{tmp_path / 'o.db'}", settings())


def test_owner_of_a_trial_is_dead_only_when_this_host_can_tell():
    me = worker_info()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {**me, "pid": child.pid, "start": process_start(child.pid)}
        assert not owner_gone(owner, me)  # alive
        assert not owner_gone(me, me)  # this very process
        assert not owner_gone({**owner, "host": "elsewhere"}, me)  # another host: heartbeat's job
        assert owner_gone({**owner, "start": owner["start"] - 1}, me)  # the pid now belongs to someone else
        assert owner_gone({**owner, "boot": "rebooted"}, me)
    finally:
        child.kill()
        child.wait()
    assert owner_gone(owner, me)  # killed


@pytest.mark.timeout(120)  # what this guards against was a wait for ever
def test_a_trial_this_process_abandoned_is_requeued_at_once(tmp_path, store_templates):  # noqa: F811
    """A connection lost between ``ask`` and the trial's first heartbeat left it RUNNING, owned by a
    live process and without a heartbeat: Optuna never calls such a trial stale, so every worker
    waited for it for ever (CI hung 75 minutes in the outage test). The worker that reconnects is
    that owner, and it fails and re-queues its abandoned trial before asking for the next one."""
    storage, mlflow_uri = stores_from_templates(store_templates, tmp_path)
    data = tiny_data()
    spec = tiny_spec(data)
    run_study(spec, data, 1, storage, settings=settings(mlflow_uri), plots=False)
    study = open_study(spec, storage, settings(mlflow_uri)).study
    lost = study.ask()  # the second forced extreme, popped from the queue
    lost.set_user_attr("worker", worker_info())  # owner written; the heartbeat never was

    run_study(spec, data, 3, storage, settings=settings(mlflow_uri), plots=False)
    trials = optuna.load_study(study_name=spec.study_name, storage=storage).get_trials()
    assert trials[lost.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state == TrialState.COMPLETE  # with the forced extreme it was asked for
    assert retry.params == trials[lost.number].system_attrs["fixed_params"]
    assert retry.user_attrs["phase"] == trials[lost.number].user_attrs["phase"]  # still the forced extreme


def test_a_heartbeat_stuck_in_the_storage_does_not_hold_the_trial(tmp_path, monkeypatch, caplog):
    """A beat that never comes back (a dead connection) must not hold the trial's result: the
    join is bounded, and the trial is told on the same, real storage."""
    from training.search import liveness

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="stuck")
    trial = study.ask()
    release, entered = threading.Event(), threading.Event()

    def stuck(trial_id):  # fault injection: the storage call blocks until the test lets it go
        entered.set()
        release.wait(60)

    monkeypatch.setattr(storage, "record_heartbeat", stuck)
    monkeypatch.setattr(liveness, "HEARTBEAT_JOIN_SLACK_S", 0.2)
    started = time.monotonic()
    try:
        with liveness.heartbeat(storage, trial):
            assert entered.wait(5)
        assert time.monotonic() - started < 5
        assert "still in the storage" in caplog.text
        study.tell(trial, 0.5)
        assert study.trials[0].state == TrialState.COMPLETE
    finally:
        release.set()


def test_a_worker_hung_at_exit_is_killed_and_a_finished_one_joined():
    """The bounded join after a worker's report: a process stuck in its exit is SIGKILLed."""
    from training.search.workers import _join_or_kill

    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=time.sleep, args=(600,))
    proc.start()
    assert _join_or_kill(proc, 0.5) and not proc.is_alive() and proc.exitcode == -signal.SIGKILL
    done = ctx.Process(target=time.sleep, args=(0,))
    done.start()
    assert not _join_or_kill(done, 60) and done.exitcode == 0
