"""Crash safety: a worker process SIGKILLed mid-trial, then the same command again.

* ``test_cli_resumes_after_sigkill``: the real ``tierhpo hpo`` on a real tier (bundled S&P 500,
  built and validated in a temp copy of the repo). The dead worker's trial is found at once
  (its pid is gone on this host), failed, retried, and its MLflow run closed.
* ``test_heartbeat_fails_a_silent_worker_of_another_host``: the dead worker is made to look like
  one on another machine, so only the heartbeat (1 s interval, 3 s grace) can detect it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import build_validated_tier
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from training.search.tracking import PARENT_TAG

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"worker exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _trials(storage: str, name: str | None = None) -> list[optuna.trial.FrozenTrial]:
    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception:
        return []
    names = [s.study_name for s in summaries if name is None or s.study_name == name]
    if not names:
        return []
    return optuna.load_study(study_name=names[0], storage=storage).get_trials()


def _mid_trial(storage: str, name: str | None = None):
    """A trial with a number >= 1 is running (its nested run exists) after at least one completed."""
    trials = _trials(storage, name)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    running = [t for t in trials if t.state == TrialState.RUNNING and t.number >= 1 and "mlflow_run_id" in t.user_attrs]
    return (done, running[0]) if done and running else None


def _assert_clean_finish(storage: str, name: str | None, target: int, before: list, killed) -> list:
    trials = _trials(storage, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == target  # exactly --trials, no overshoot
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    by_number = {t.number: t for t in trials}
    for t in before:  # nothing finished before the kill was lost or redone
        assert by_number[t.number].state == TrialState.COMPLETE
        assert by_number[t.number].value == t.value
        assert by_number[t.number].datetime_complete == t.datetime_complete
    dead = by_number[killed.number]
    assert dead.state == TrialState.FAIL
    retry = [t for t in trials if (t.user_attrs.get("info") or {}).get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params
    client = MlflowClient()
    killed_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["state"] == "FAIL"
    parent_id = killed_run.data.tags[PARENT_TAG]
    experiment = killed_run.info.experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent_id}'")
    assert sorted(r.info.status for r in children) == ["FINISHED"] * target + ["KILLED"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    return trials


def test_cli_resumes_after_sigkill(repo_copy, isolated_stores):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["train"].update(max_epochs=3, patience=3, progress=False)
    params["hpo"]["storage"].update(heartbeat_interval=1, grace_period=30, poll_seconds=0.2)
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    build_validated_tier(repo_copy, "a20", env)
    command = ["tierhpo", "hpo", "--tier", "a20", "--budget", "20K", "--horizon", "1", "--trials", "3",
               "--forced", "2", "--quiet", "--threads", "1", "--workers", "1"]
    storage = os.environ["TIERHPO_OPTUNA_STORAGE"]

    proc = subprocess.Popen(command, cwd=repo_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        before, killed = _wait_for(lambda: _mid_trial(storage), 600, "a trial mid-run", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    again = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_clean_finish(storage, None, 3, before, killed)
    out = repo_copy / "results" / "hpo" / "a20" / "20K" / "h1"
    best = json.loads((out / "best.json").read_text())
    assert best["trial_number"] in {t.number for t in _trials(storage) if t.state == TrialState.COMPLETE}
    assert json.loads((out / "metrics.json").read_text())["hpo/n_complete"] == 3

    # The same command once more: nothing left to run, the outputs are rewritten from the study.
    n_before = len(_trials(storage))
    third = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert not re.search(r"^trial +\d+", third.stderr, re.MULTILINE)
    assert len(_trials(storage)) == n_before
    assert json.loads((out / "best.json").read_text())["trial_number"] == best["trial_number"]


WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
import training.search.objective as objective
if os.environ.get("STALL_SECOND_TRIAL"):
    # Tiny trials finish faster than a poll on an idle machine: hold the second one open
    # (its MLflow run and heartbeat already live) until the test kills this process.
    real_train, calls = objective.train, []
    def stalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(600)
        return real_train(*args, **kwargs)
    objective.train = stalled
from tests.hpo_tiny import settings, tiny_data, tiny_spec
from training.search.study import run_study
from training.trainer import TrainConfig
data = tiny_data(n_days=700)
spec = tiny_spec(data, train=TrainConfig(max_epochs=4, patience=4, progress=False))
run_study(spec, data, 3, {storage!r}, settings=settings(), plots=False)
print("study", spec.study_name)
"""


def test_heartbeat_fails_a_silent_worker_of_another_host(tmp_path, isolated_stores):
    storage = os.environ["TIERHPO_OPTUNA_STORAGE"]
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), storage=storage))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env={**env, "STALL_SECOND_TRIAL": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        before, killed = _wait_for(lambda: _mid_trial(storage), 600, "a trial mid-run", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    # Make the dead worker look like one on another machine: its pid cannot be checked from here,
    # only its missing heartbeats tell.
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(storage)[0].study_name, storage=storage)
    frozen = next(t for t in study.get_trials() if t.number == killed.number)
    study._storage.set_trial_user_attr(frozen._trial_id, "worker", {"host": "elsewhere", "pid": 1, "boot": "x"})

    started = time.monotonic()
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert time.monotonic() - started >= 3  # it had to wait out the grace period
    _assert_clean_finish(storage, None, 3, before, killed)


REPRO_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
import training.search.objective as objective
import training.search.sampler as sampler_module
# Two start-up trials instead of TPE's ten, so a 6-trial study reaches TPE (and its RNG) before the kill.
class QuickTPE(sampler_module.TPESampler):
    def __init__(self, **kwargs):
        super().__init__(n_startup_trials=2, **kwargs)
sampler_module.TPESampler = QuickTPE
stall_at = int(os.environ.get("STALL_AT", "0"))
if stall_at:
    real_train, calls = objective.train, []
    def stalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == stall_at:
            time.sleep(600)
        return real_train(*args, **kwargs)
    objective.train = stalled
from tests.hpo_tiny import settings, tiny_data, tiny_spec
from training.search.study import run_study
from training.trainer import TrainConfig
data = tiny_data(n_days=700)
spec = tiny_spec(data, train=TrainConfig(max_epochs=2, patience=2, progress=False))
run_study(spec, data, {n_trials}, os.environ["STORAGE"], settings=settings(), plots=False)
"""


def _completed(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials in order of completion."""
    done = [t for t in _trials(storage) if t.state == TrialState.COMPLETE]
    return sorted(done, key=lambda t: t.datetime_complete)


def test_resume_reproduces_the_uninterrupted_study(tmp_path, isolated_stores):
    """A study SIGKILLed mid-trial after 3 COMPLETE trials and resumed ends exactly where the same
    study run without interruption ends (``--workers 1``): the same parameters and values for every
    COMPLETE trial in order of completion, and the same best trial.

    The killed trial is failed and re-queued with its parameters, so every later trial has a trial
    number one higher than in the uninterrupted study, and the resuming process starts with a fresh
    sampler object. Sampling must therefore depend on neither: each draw is seeded from the study
    seed and the trial's *sampling index* (its number less the failed-and-re-queued trials before it),
    and reads only the stored history (TPE start-up cut to 2 trials so TPE draws are covered).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    n_trials, stall_at = 6, 4  # forced 0, 1, then trial 2 (TPE); trial 3 is killed mid-run
    script = tmp_path / "worker.py"
    script.write_text(REPRO_WORKER.format(repo=str(REPO), n_trials=n_trials))
    straight = f"sqlite:///{tmp_path / 'straight.db'}"
    resumed = os.environ["TIERHPO_OPTUNA_STORAGE"]

    once = subprocess.run([sys.executable, str(script)], env={**env, "STORAGE": straight,
                               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'straight-mlflow.db'}"},
                          capture_output=True, text=True, timeout=900)
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, str(script)], env={**env, "STORAGE": resumed, "STALL_AT": str(stall_at)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        before, killed = _wait_for(
            lambda: (lambda m: m if m and len(m[0]) == stall_at - 1 else None)(_mid_trial(resumed)),
            600, "the fourth trial mid-run", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    again = subprocess.run([sys.executable, str(script)], env={**env, "STORAGE": resumed},
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _assert_clean_finish(resumed, None, n_trials, before, killed)

    a, b = _completed(straight), _completed(resumed)
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]
    best_a = max(a, key=lambda t: t.value)
    best_b = max(b, key=lambda t: t.value)
    assert (best_a.params, best_a.value) == (best_b.params, best_b.value)
