"""The HPO engine end to end with the real trainer, a real SQLite Optuna storage and a real MLflow
SQLite store (tiny data, tiny budget, 1-2 epochs).

One study (``finished``) is run once per module and inspected by several tests; it uses its own
stores under a module temp dir, passed explicitly (the per-test env stores of conftest stay unused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from hpo_tiny import SPACE, settings, tiny_data, tiny_spec
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import training.search.objective as objective_module
from pipelines.errors import TierHpoError
from training.dataset import TierData
from training.model import ModelConfig, PatchTSTClassifier
from training.search import waste
from training.search.config import PrunerConfig
from training.search.objective import owner_gone, process_start, worker_info
from training.search.results import write_outputs
from training.search.space import ParamConfig, SearchSpace
from training.search.study import _hpo_view, open_study, run_study
from training.search.tracking import PARENT_TAG
from training.trainer import TrainConfig
from training.trainer import train as real_train

optuna.logging.set_verbosity(optuna.logging.WARNING)

BEST_KEYS = {"study_name", "storage", "tier", "budget", "budget_params", "horizon", "seed", "trial_number",
             "mlflow_run_id", "parent_run_id", "experiment_id", "params", "model_config", "train_config",
             "n_params", "metrics", "data_version", "git_commit"}


@pytest.fixture(scope="module")
def store_templates(tmp_path_factory):
    """Empty MLflow and Optuna databases, created once: creating their tables (Alembic migrations)
    costs seconds, copying the files costs nothing. Every test still gets its own stores."""
    root = tmp_path_factory.mktemp("templates")
    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    optuna.storages.RDBStorage(f"sqlite:///{root / 'optuna.db'}")
    return root


@pytest.fixture(autouse=True)
def fresh_stores_from_templates(store_templates, isolated_stores):
    for name in ("mlflow.db", "optuna.db"):
        shutil.copyfile(store_templates / name, isolated_stores / name)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, store_templates):
    """A 3-trial study (2 forced) plus an enqueued duplicate of trial 0, run to 4 COMPLETE trials."""
    root = tmp_path_factory.mktemp("hpo")
    for name in ("mlflow.db", "optuna.db"):
        shutil.copyfile(store_templates / name, root / name)
    storage, mlflow_uri = f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"
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


def child_runs(client: MlflowClient, parent_id: str):
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")


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
    for key in ("tier", "budget", "horizon", "study_name", "git_commit", "data_version"):
        assert parent.data.tags[key], key
    assert parent.data.tags["study_name"] == finished["spec"].study_name
    assert "hpo/wasted_fraction" in parent.data.metrics and "best/val/auc" in parent.data.metrics
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots

    runs = child_runs(client, result.parent_run_id)
    assert len(runs) == 4
    assert all(r.info.status == "FINISHED" for r in runs)  # all four trials are COMPLETE
    for run in runs:
        tags = run.data.tags
        assert {"phase", "trial_number", "state", "wasted_reason"} <= set(tags)
        assert tags["state"] == "COMPLETE"
        assert "coverage/overall" in run.data.metrics
        assert "coverage.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        if tags["wasted_reason"] == "duplicate":
            continue
        assert int(run.data.params["n_params"]) == run.data.metrics["n_params"]
        assert abs(run.data.metrics["n_params"] - 5000) <= 500  # the real count, within the budget
        for name in ("val/auc", "val/brier", "val/log_loss_skill", "val/pred_std", "val/ece"):
            assert math.isfinite(run.data.metrics[name]), name
        steps = client.get_metric_history(run.info.run_id, "val/auc")
        assert {m.step for m in steps} >= {1, 2} - {0} and len(steps) >= 2  # per-epoch + final
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
    assert study.user_attrs["coverage"] == handle.engine.tracker.from_study(study).to_json()
    last = study.get_trials()[-1]
    assert last.user_attrs["info"]["coverage"]["coverage/overall"] == pytest.approx(
        study.user_attrs["coverage"]["overall"])


def test_a_trial_that_raises_is_recorded_and_the_study_goes_on(monkeypatch):
    calls = []

    def flaky_train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom in the trainer")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train", flaky_train)
    data = tiny_data()
    result = run_study(tiny_spec(data, forced=0), data, 1, settings=settings(), plots=False)
    study = optuna.load_study(study_name=result.study_name, storage=_default_storage())
    first, second = study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["wasted"] == waste.FAILED
    assert first.user_attrs["info"]["fail_reason"] == "RuntimeError: boom in the trainer"
    assert second.state == TrialState.COMPLETE
    client = MlflowClient()
    statuses = {r.data.tags["trial_number"]: r.info.status for r in child_runs(client, result.parent_run_id)}
    assert statuses == {"0": "FAILED", "1": "FINISHED"}
    assert result.metrics["hpo/wasted/failed"] == pytest.approx(0.5)


def _default_storage() -> str:
    from pipelines import paths

    return paths.optuna_storage_url()


def test_interrupt_closes_every_run_requeues_the_trial_and_resumes(monkeypatch):
    calls = []

    def interrupted_train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train", interrupted_train)
    data = tiny_data()
    spec = tiny_spec(data, forced=2)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, data, 2, settings=settings(), plots=False)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tierhpo-a20")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    study = optuna.load_study(study_name=spec.study_name, storage=_default_storage())
    killed = study.get_trials()[1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["info"]["fail_reason"] == "interrupted"
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [killed.params]

    result = run_study(spec, data, 2, settings=settings(), plots=False)  # the same command again
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == killed.params and trials[2].user_attrs["info"]["retry_of"] == 1
    assert trials[2].user_attrs["phase"] == "forced"
    statuses = sorted(r.info.status for r in child_runs(client, result.parent_run_id))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


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


def test_parent_nests_under_an_outer_mlflow_run(monkeypatch):
    client = MlflowClient()
    outer_exp = client.create_experiment("outer")
    outer = client.create_run(outer_exp, run_name="mlflow-run-entry-point")
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    data = tiny_data()
    result = run_study(tiny_spec(data, forced=1), data, 1, settings=settings(), plots=False)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags[PARENT_TAG] == outer.info.run_id and parent.info.experiment_id == outer_exp
    assert client.get_run(outer.info.run_id).info.status == "RUNNING"  # mlflow run ends it, not us


def test_study_identity_and_storage_errors(tmp_path):
    data = tiny_data()
    spec = tiny_spec(data)
    assert spec.study_name.startswith("a20-5K-h1-")
    assert tiny_spec(data).study_name == spec.study_name
    assert tiny_spec(data, data_version="other").study_name != spec.study_name
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


class _PruneTrials(optuna.pruners.BasePruner):
    """Prunes trial 2 at its 2nd epoch (late: 2 > 0.5 x 3) and trial 3 at its 1st (early)."""

    def prune(self, study, trial) -> bool:
        step = trial.last_step or 0
        return (trial.number == 2 and step >= 2) or (trial.number == 3 and step >= 1)


@dataclasses.dataclass(frozen=True)
class _PruneTrialsConfig(PrunerConfig):
    def build(self, max_epochs: int) -> optuna.pruners.BasePruner:
        return _PruneTrials()


def test_pruned_trials_are_killed_runs_and_late_ones_count_as_wasted():
    data = tiny_data()
    spec = tiny_spec(data, forced=2, pruner=_PruneTrialsConfig(kind="median"),
                     train=TrainConfig(max_epochs=3, patience=3, progress=False))
    result = run_study(spec, data, 3, settings=settings(), plots=False)
    study = optuna.load_study(study_name=spec.study_name, storage=_default_storage())
    states = [(t.state, t.user_attrs.get("wasted"), t.user_attrs["info"]["epochs"]) for t in study.get_trials()]
    assert states[2] == (TrialState.PRUNED, waste.LATE_PRUNED, 2)
    assert states[3] == (TrialState.PRUNED, None, 1)  # pruned early: the pruner saved compute, not wasted
    assert [s[0] for s in states].count(TrialState.COMPLETE) == 3
    statuses = {r.data.tags["trial_number"]: r.info.status for r in child_runs(MlflowClient(), result.parent_run_id)}
    assert statuses["2"] == statuses["3"] == "KILLED"
    assert result.metrics["hpo/wasted/late_pruned"] == pytest.approx(1 / 5)
    assert result.metrics["hpo/n_pruned"] == 2


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
