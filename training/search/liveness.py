"""Trial liveness: heartbeats, stale and dead-process trials (failed and re-queued, their MLflow
runs closed), and SIGTERM unwinding like Ctrl-C."""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from training.search import waste
from training.search.objective import owner_gone, worker_info
from training.search.tracking import RUN_ATTR, StudyTracking

log = logging.getLogger(__name__)
HEARTBEAT_JOIN_SLACK_S = 30.0


class StaleTrialHandler:
    """Heartbeat-stale (or dead-process) trial: re-queue it and close its MLflow run."""

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracking: StudyTracking | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # The retry inherits what says what to run (phase, forced index), not who ran it: a copied
        # owner or run id would make the retry look like the dead trial to the next check.
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in ("phase", "forced_index")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry(study, clean)
        log.warning("trial %d of %s: %s; marked FAIL and re-queued", trial.number, study.study_name, waste.DIED)
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id and self.tracking is not None:
            self.tracking.close_run(run_id, "KILLED", {"state": "FAIL", "wasted_reason": waste.FAILED,
                                                       "fail_reason": waste.DIED})


def fail_dead_trials(study: optuna.Study, storage: RDBStorage, handler: StaleTrialHandler) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose worker is gone and re-queue them:

    * heartbeat-stale ones (Optuna's ``fail_stale_trials``; any host);
    * at once, those whose owner on this host is dead (pid gone or reused, or the host rebooted);
    * those that never got an owner or a heartbeat (the process died between ``ask`` and its
      first write) once they are older than twice the grace period;
    * at once, those owned by this very process: the caller runs no trial while it checks
      (``fill`` calls this between trials), so such a trial was abandoned when the connection
      dropped mid-trial and the worker reconnected. Waiting for its heartbeat to go stale
      would only delay it, and a trial that never got a heartbeat would never go stale.

    Returns the study's trials as they are afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    me = worker_info()
    grace = 2 * (storage.grace_period or 2 * (storage.get_heartbeat_interval() or 60))
    now = datetime.datetime.now()
    trials = study.get_trials(deepcopy=False)
    failed = False
    for t in (t for t in trials if t.state == TrialState.RUNNING):
        owner = t.user_attrs.get("worker")
        orphan = owner is None and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace
        if not orphan and owner != me and not owner_gone(owner or {}, me):
            continue
        try:  # FrozenTrial._trial_id: the storage key Optuna's own fail_stale_trials uses
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                handler(study, storage.get_trial(t._trial_id))
                failed = True
        except UpdateFinishedTrialError:
            pass  # another worker got there first
    return study.get_trials(deepcopy=False) if failed else trials


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every ``heartbeat_interval`` s while it runs (as Optuna's
    ``optimize`` does; ask/tell leaves it to the caller)."""
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()
    trial_id = trial._trial_id  # Optuna's own heartbeat thread keys on it too

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a lost connection must not kill the trial; staleness will tell
                log.warning("heartbeat of trial %d failed: %s", trial.number, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # Bounded: a beat stuck in a dead connection must not hold the trial's result (the thread
        # is a daemon, and the storage's own timeouts end the stuck call).
        thread.join(interval + HEARTBEAT_JOIN_SLACK_S)
        if thread.is_alive():
            log.warning("heartbeat of trial %d still in the storage after %.0f s; leaving it behind",
                        trial.number, interval + HEARTBEAT_JOIN_SLACK_S)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``dvc`` stopping a stage) unwinds like Ctrl-C, so runs are closed and the
    trial is re-queued instead of being left RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
