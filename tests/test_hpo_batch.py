"""``hpo.batch_trials`` > 1: a worker asks several trials at once and trains those sharing a
structure as one ``train_batch``, with the real trainer and real SQLite Optuna and MLflow stores.

The space varies only lr and dropout (the structure and batch size are fixed), so every batch
forms one group: the batched path is exercised in every test, not left to chance.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
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

from common.errors import TierHpoError
from training.search import waste
from training.search.config import HpoConfig, PrunerConfig
from training.search.coverage import CoverageConfig
from training.search.space import ParamConfig, SearchSpace
from training.search.study import run_study
from training.trainer import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]

SHARED = SearchSpace.from_config({
    "lr": ParamConfig("float", 1e-3, 1e-2, log=True),
    "dropout": ParamConfig("float", 0.0, 0.2),
})


def shared_spec(data, **over):
    base = dict(space=SHARED, coverage=CoverageConfig(bins=3, target=0.8, pairs=[["lr", "dropout"]]))
    return tiny_spec(data, **{**base, **over})


def batched(k: int, tracking_uri: str | None = None):
    return dataclasses.replace(settings(tracking_uri), batch_trials=k)


def _study(spec, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=storage or default_storage())


@pytest.mark.parametrize("k", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_batched_study_has_exact_counts_and_one_run_per_trial_with_epoch_points(k):
    data = tiny_data()
    spec = shared_spec(data, forced=2)
    result = run_study(spec, data, 5, settings=batched(k), plots=False)
    trials = [t for t in _study(spec).get_trials() if not waste.is_void(t)]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5  # exactly hpo.trials, no overshoot
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert max(t.user_attrs["info"].get("batched", 1) for t in trials) == k  # a group of k trained as one batch
    client = MlflowClient()
    runs = {r.data.tags["trial_number"]: r for r in child_runs(client, result.parent_run_id)}
    assert sorted(runs) == sorted(str(t.number) for t in trials)  # one nested run per trial
    for t in trials:
        run = runs[str(t.number)]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"] and run.info.status == "FINISHED"
        points = client.get_metric_history(run.info.run_id, "val/auc")
        assert sorted(p.step for p in points) == [1, 2]  # the member's own per-epoch curve
        auc = t.user_attrs["metrics"]["val/auc"]  # the best epoch's, one of the points
        assert any(abs(p.value - auc) < 1e-7 for p in points)
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


def test_a_trial_trained_in_a_batch_equals_it_trained_alone(tmp_path, store_templates):  # noqa: F811
    """The two forced trials (the same configs in both studies): alone (batch_trials 1) and as one
    batch of two (batch_trials 4, two slots) give the same val AUC within 1e-6."""
    data = tiny_data()
    spec = shared_spec(data, forced=2)
    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    shutil.copyfile(store_templates / "optuna.db", tmp_path / "alone.db")
    run_study(spec, data, 2, alone, settings=batched(1), plots=False)
    run_study(spec, data, 2, settings=batched(4), plots=False)
    a = sorted(_study(spec, alone).get_trials(), key=lambda t: t.number)
    b = sorted(_study(spec).get_trials(), key=lambda t: t.number)
    assert [t.params for t in a] == [t.params for t in b]
    assert "batched" not in a[0].user_attrs["info"] and b[0].user_attrs["info"]["batched"] == 2
    for x, y in zip(a, b, strict=True):
        assert x.state == y.state == TrialState.COMPLETE
        assert abs(x.value - y.value) <= 1e-6
        assert abs(x.user_attrs["metrics"]["val/auc"] - y.user_attrs["metrics"]["val/auc"]) <= 1e-6


class _PruneTrials(optuna.pruners.BasePruner):
    """Prunes trial 2 at its 2nd epoch (late: 2 > 0.5 x 3) and trial 3 at its 1st (early)."""

    def prune(self, study, trial) -> bool:
        step = trial.last_step or 0
        return (trial.number == 2 and step >= 2) or (trial.number == 3 and step >= 1)


@dataclasses.dataclass(frozen=True)
class _PruneTrialsConfig(PrunerConfig):
    def build(self, max_epochs: int) -> optuna.pruners.BasePruner:
        return _PruneTrials()


def test_pruning_drops_a_member_of_a_batch_and_the_others_go_on():
    data = tiny_data()
    spec = shared_spec(data, forced=2, pruner=_PruneTrialsConfig(kind="median", n_warmup_steps=0, until_fraction=1.0),
                       train=TrainConfig(max_epochs=3, patience=3, progress=False, eval_batch_size=512))
    result = run_study(spec, data, 4, settings=batched(4), plots=False)  # 4 free slots: trials 0-3 in one batch
    trials = sorted(_study(spec).get_trials(), key=lambda t: t.number)
    first = [(t.state, t.user_attrs.get("wasted"), t.user_attrs["info"]["epochs"]) for t in trials[:4]]
    assert all(t.user_attrs["info"]["batched"] == 4 for t in trials[:4])  # trials 0-3: one batch
    assert first[0] == first[1] == (TrialState.COMPLETE, None, 3)
    assert first[2] == (TrialState.PRUNED, waste.LATE_PRUNED, 2)
    assert first[3] == (TrialState.PRUNED, None, 1)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    client = MlflowClient()
    runs = {r.data.tags["trial_number"]: r for r in child_runs(client, result.parent_run_id)}
    assert runs["2"].info.status == runs["3"].info.status == "KILLED"
    assert len(client.get_metric_history(runs["3"].info.run_id, "val/auc")) == 1  # dropped after epoch 1
    assert len(client.get_metric_history(runs["0"].info.run_id, "val/auc")) == 3


def test_batch_trials_is_validated():
    base = dict(tiers=["a20"], budgets=["20K"], horizons=[1], space={})
    assert HpoConfig(**base).batch_trials == 1
    for bad in (0, -1, 2.5, True):
        with pytest.raises(TierHpoError, match="batch_trials"):
            HpoConfig(**base, batch_trials=bad)


KILL_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
import dataclasses
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
import training.search.batch as batch
if os.environ.get("STALL_SECOND_BATCH"):
    real, calls = batch.train_batch, []
    def stalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(600)
        return real(*args, **kwargs)
    batch.train_batch = stalled
from test_hpo_batch import batched, shared_spec
from hpo_tiny import tiny_data
from training.search.study import run_study
data = tiny_data()
run_study(shared_spec(data, forced=2), data, 5, os.environ["STORAGE"], settings=batched(3), plots=False)
"""


@pytest.mark.slow
def test_sigkill_mid_batch_loses_only_that_batch_and_resume_requeues_its_members(tmp_path, isolated_stores):
    storage = os.environ["TIERHPO_OPTUNA_STORAGE"]
    script = tmp_path / "worker.py"
    script.write_text(KILL_WORKER.format(repo=str(REPO), tests=str(REPO / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STORAGE": storage}
    proc = subprocess.Popen([sys.executable, str(script)], env={**env, "STALL_SECOND_BATCH": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def in_flight():
        try:
            name = optuna.get_all_study_summaries(storage)[0].study_name
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        except Exception:
            return None
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
        return (name, done, running) if len(done) == 3 and len(running) == 2 else None

    try:
        deadline, seen = time.monotonic() + 300, None
        while seen is None and time.monotonic() < deadline and proc.poll() is None:
            seen = in_flight()
            time.sleep(0.2)
        assert seen is not None, (proc.stdout.read() if proc.poll() is not None else "timed out")[-3000:]
        time.sleep(0.5)  # both members are inside the stalled train_batch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    name, before, killed = seen
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    trials = {t.number: t for t in optuna.load_study(study_name=name, storage=storage).get_trials()}
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 5
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in before:  # the batch before the kill is kept as it was
        assert trials[t.number].state == TrialState.COMPLETE and trials[t.number].value == t.value
    client = MlflowClient()
    for t in killed:  # each member of the lost batch: failed, its run closed, retried once with its params
        assert trials[t.number].state == TrialState.FAIL
        retry = [r for r in trials.values() if (r.user_attrs.get("info") or {}).get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == t.params
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    experiment = client.get_run(killed[0].user_attrs["mlflow_run_id"]).info.experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
