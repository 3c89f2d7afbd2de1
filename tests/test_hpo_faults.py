"""Faults and edge cases of the HPO engine with the real trainer and real SQLite stores: a trial that
raises, Ctrl-C mid-trial, pruning (early and late), and nesting under an outer ``mlflow run``."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import sqlalchemy
from hpo_tiny import (  # noqa: F401  (fixtures are used by name)
    child_runs,
    default_storage,
    fresh_stores_from_templates,
    settings,
    store_templates,
    tiny_data,
    tiny_spec,
)
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import training.search.objective as objective_module
from common.errors import TierHpoError
from training.search import waste
from training.search.config import PrunerConfig
from training.search.study import run_study
from training.search.tracking import PARENT_TAG
from training.search.workers import Backoff, run_worker_resilient
from training.trainer import TrainConfig
from training.trainer import train as real_train

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    study = optuna.load_study(study_name=result.study_name, storage=default_storage())
    first, second = study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["wasted"] == waste.FAILED
    assert first.user_attrs["info"]["fail_reason"] == "RuntimeError: boom in the trainer"
    assert second.state == TrialState.COMPLETE
    client = MlflowClient()
    statuses = {r.data.tags["trial_number"]: r.info.status for r in child_runs(client, result.parent_run_id)}
    assert statuses == {"0": "FAILED", "1": "FINISHED"}
    assert result.metrics["hpo/wasted/failed"] == pytest.approx(0.5)


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
    study = optuna.load_study(study_name=spec.study_name, storage=default_storage())
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


def test_parent_nests_under_an_outer_mlflow_run(monkeypatch, isolated_stores):
    client = MlflowClient()
    outer_exp = client.create_experiment("outer", artifact_location=(isolated_stores / "outer").as_uri())
    outer = client.create_run(outer_exp, run_name="mlflow-run-entry-point")
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    data = tiny_data()
    result = run_study(tiny_spec(data, forced=1), data, 1, settings=settings(), plots=False)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags[PARENT_TAG] == outer.info.run_id and parent.info.experiment_id == outer_exp
    assert client.get_run(outer.info.run_id).info.status == "RUNNING"  # mlflow run ends it, not us


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
    spec = tiny_spec(data, forced=2, pruner=_PruneTrialsConfig(kind="median", n_warmup_steps=0, until_fraction=1.0),
                     train=TrainConfig(max_epochs=3, patience=3, progress=False))
    result = run_study(spec, data, 3, settings=settings(), plots=False)
    study = optuna.load_study(study_name=spec.study_name, storage=default_storage())
    states = [(t.state, t.user_attrs.get("wasted"), t.user_attrs["info"]["epochs"]) for t in study.get_trials()]
    assert states[2] == (TrialState.PRUNED, waste.LATE_PRUNED, 2)
    assert states[3] == (TrialState.PRUNED, None, 1)  # pruned early: the pruner saved compute, not wasted
    assert [s[0] for s in states].count(TrialState.COMPLETE) == 3
    statuses = {r.data.tags["trial_number"]: r.info.status for r in child_runs(MlflowClient(), result.parent_run_id)}
    assert statuses["2"] == statuses["3"] == "KILLED"
    assert result.metrics["hpo/wasted/late_pruned"] == pytest.approx(1 / 5)
    assert result.metrics["hpo/n_pruned"] == 2


def test_a_broken_setup_stops_after_consecutive_failures(monkeypatch):
    def broken_train(*args, **kwargs):
        raise ValueError("features are all NaN")

    monkeypatch.setattr(objective_module, "train", broken_train)
    data = tiny_data()
    spec = tiny_spec(data, forced=0)
    with pytest.raises(TierHpoError, match=r"last 2 trials of study .* all failed .*ValueError: features are all NaN"):
        run_study(spec, data, 3, settings=dataclasses.replace(settings(), max_consecutive_failures=2), plots=False)
    study = optuna.load_study(study_name=spec.study_name, storage=default_storage())
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tierhpo-a20").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")


def test_a_complete_whose_reply_was_lost_still_ends_its_run_finished(monkeypatch):
    """The database commits a trial's COMPLETE, then the connection drops before the reply (and stays
    down for the engine's FAIL bookkeeping): the worker closes the run as FAILED and waits for the
    storage. Once it is back the study is the record: the run is FINISHED with the trial's metrics."""
    real_tell, real_set = optuna.Study.tell, optuna.trial.Trial.set_user_attr
    lost: list[int] = []
    down = {"writes": 0}

    def connection_dropped():
        return sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    def tell(self, trial, values=None, state=None, skip_if_finished=False):
        frozen = real_tell(self, trial, values, state=state, skip_if_finished=skip_if_finished)
        if not lost and values is not None and frozen.number >= 1:
            lost.append(frozen.number)
            down["writes"] = 1
            raise connection_dropped()
        return frozen

    def set_user_attr(self, key, value):
        if down["writes"]:
            down["writes"] -= 1
            raise connection_dropped()
        return real_set(self, key, value)

    monkeypatch.setattr(optuna.Study, "tell", tell)
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", set_user_attr)
    data = tiny_data()
    spec = tiny_spec(data, forced=1)
    lines: list[str] = []
    run_worker_resilient(spec, data, 3, default_storage(), settings=settings(), worker_index=0,
                         backoff=Backoff(tries=2, first_s=0.01, max_s=0.01), echo=lines.append)
    assert lost and any("unavailable" in line for line in lines)  # the fault happened and was ridden out

    study = optuna.load_study(study_name=spec.study_name, storage=default_storage())
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and lost[0] in {t.number for t in complete}
    client = MlflowClient()
    for t in complete:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE", t.number
        assert run.data.metrics["objective"] == pytest.approx(t.value)
        assert run.data.metrics["best/val/auc"] == pytest.approx(t.user_attrs["metrics"]["val/auc"])
    reconciled = client.get_run(next(t for t in complete if t.number == lost[0]).user_attrs["mlflow_run_id"])
    assert reconciled.data.tags["closed_by"] == "reconcile"
