"""The worker loop: run trials of an opened study until it has ``n_trials`` COMPLETE ones.

Before each ``ask`` it fails stale trials (heartbeat, and at once for a dead process on this
host), then claims a slot only if COMPLETE + RUNNING < ``n_trials`` (the trial target); when
running trials hold the remaining slots it waits, since one of them may still fail and need a
retry. ``lock`` (a context-manager factory, e.g. a PostgreSQL advisory lock) makes check-and-ask
atomic across workers; without one, a worker that finds itself past the target right after
``ask`` gives its trial back as "void" (and re-queues a config it had popped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from common.errors import TierHpoError
from training.dataset import TierData
from training.search import batch, waste
from training.search.config import StorageConfig
from training.search.liveness import StaleTrialHandler, fail_dead_trials, heartbeat, sigterm_as_interrupt
from training.search.objective import Prepared, TrialOutcome, TrialRunner, worker_info
from training.search.spec import Engine, StudySpec
from training.search.tracking import StudyTracking


@dataclass(frozen=True)
class WorkerSettings:
    storage: StorageConfig = field(default_factory=StorageConfig)
    log_every_s: float = 15.0
    progress: bool = False  # the trainer's tqdm bars
    checkpoints: bool = True  # upload a trial's weights to MLflow when it becomes the best
    tracking_uri: str | None = None
    # Stop (one-line error) after this many trials in a row failed in this worker: a broken setup
    # (bad data, a trainer bug) must not spin out FAIL trials forever, since they never count as COMPLETE.
    max_consecutive_failures: int = 5
    batch_trials: int = 1  # hpo.batch_trials: trials asked at once, same-structure ones trained as one batch


@dataclass
class WorkerReport:
    """What one ``run_worker`` call did (timings feed the tracking-overhead benchmark)."""

    outcomes: list[TrialOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    train_s: float = 0.0
    tracking_s: float = 0.0
    storage_s: float = 0.0
    sampling_s: float = 0.0
    n_void: int = 0


@dataclass
class StudyHandle:
    spec: StudySpec
    engine: Engine
    storage: RDBStorage
    storage_url: str
    study: optuna.Study
    tracking: StudyTracking
    handler: StaleTrialHandler
    sampler: optuna.samplers.BaseSampler



def _trial_counts(trials: list[FrozenTrial]) -> tuple[int, int]:
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    running = sum(t.state == TrialState.RUNNING and not waste.is_void(t) for t in trials)
    return complete, running


def _past_target(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    complete, _ = _trial_counts(trials)
    running = sorted(t.number for t in trials if t.state == TrialState.RUNNING and not waste.is_void(t))
    return trial.number not in running[: max(n_trials - complete, 0)]


def _void(study: optuna.Study, trial: optuna.Trial) -> None:
    """Give back a claimed trial that has run nothing, re-queueing a config it had popped."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    trial.set_user_attr("void", True)
    study.tell(trial, state=TrialState.FAIL)
    attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ("void", "worker")}
    if frozen.system_attrs.get("fixed_params"):
        study.enqueue_trial(frozen.system_attrs["fixed_params"], user_attrs=attrs)
    elif frozen.params:
        system = {k: v for k, v in frozen.system_attrs.items() if k in ("failed_trial", "retry_history")}
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=frozen.params,
                                                  distributions=frozen.distributions, user_attrs=attrs,
                                                  system_attrs=system))


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are "supposed to be used with Study.optimize"; run_worker
        # records them itself (see ``heartbeat``), which is what optimize does.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        return study.ask()


def fill(handle: StudyHandle, data: TierData, n_trials: int, *, settings: WorkerSettings | None = None,
         lock: Callable[[], contextlib.AbstractContextManager] | None = None,
         echo: Callable[[str], None] | None = None, base_tags: dict[str, str] | None = None) -> WorkerReport:
    """Run trials of the opened study until it has ``n_trials`` COMPLETE trials (see module doc)."""
    if n_trials < 1:
        raise TierHpoError(f"--trials must be >= 1, got {n_trials}")
    settings = settings or WorkerSettings()
    study, storage, tracking = handle.study, handle.storage, handle.tracking
    runner = TrialRunner(handle.engine, study, _hpo_view(data), tracking, handle.sampler,
                         log_every_s=settings.log_every_s, progress=settings.progress,
                         checkpoints=settings.checkpoints, base_tags=base_tags or {})
    report = WorkerReport()
    started = time.perf_counter()
    status = "FAILED"
    try:
        with sigterm_as_interrupt():
            while True:
                with (lock or contextlib.nullcontext)(), runner.storage_timer():
                    complete, running = _trial_counts(fail_dead_trials(study, storage, handle.handler))
                    trial = _ask_and_claim(study, storage) if complete + running < n_trials else None
                if complete >= n_trials:
                    break
                if trial is None:  # the last slots are held by running trials that may still fail
                    time.sleep(settings.storage.poll_seconds)
                    continue
                if lock is None and _past_target(study, trial, n_trials):
                    with runner.storage_timer():
                        _void(study, trial)
                    report.n_void += 1
                    continue
                if echo is not None:  # the batch's progress: how many trials of how many
                    echo(f"{study.study_name}: {complete}/{n_trials} trials complete, starting trial {trial.number}")
                if settings.batch_trials > 1:
                    report.outcomes.extend(_run_batch(handle, runner, trial, n_trials, settings.batch_trials,
                                                      lock, report, echo))
                else:
                    with heartbeat(storage, trial):
                        report.outcomes.append(runner.run(trial, echo))
                _check_failure_streak(report.outcomes, settings.max_consecutive_failures, study.study_name)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with contextlib.suppress(Exception):
            tracking.set_parent_status(status)
        report.wall_s = time.perf_counter() - started
        report.train_s = runner.train_seconds
        report.tracking_s = tracking.timer.seconds
        report.storage_s = runner.storage_timer.seconds
        report.sampling_s = runner.sampling_timer.seconds
    return report


def _claim(study: optuna.Study, storage: RDBStorage, n_trials: int,
           lock: Callable[[], contextlib.AbstractContextManager] | None, runner: TrialRunner) -> optuna.Trial | None:
    """One more trial for the batch in hand, if a slot is free (the same claim as ``fill``'s)."""
    with (lock or contextlib.nullcontext)(), runner.storage_timer():
        complete, running = _trial_counts(study.get_trials(deepcopy=False))
        if complete + running >= n_trials:
            return None
        return _ask_and_claim(study, storage)


def _ask_and_claim(study: optuna.Study, storage: RDBStorage) -> optuna.Trial:
    """Ask for a trial and claim it at once: first heartbeat, then owner (for dead-process checks).

    The order matters when the connection drops between the writes. A trial with an owner but no
    heartbeat would never go stale (Optuna judges only trials that have one), and an owner on
    another host cannot be checked: the study would wait for it for ever. Heartbeat first, a
    trial is always either beating or ownerless, and ownerless trials are failed after the grace.
    """
    trial = _ask(study)
    if storage.get_heartbeat_interval():
        storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", worker_info())
    return trial


def _run_batch(handle: StudyHandle, runner: TrialRunner, first: optuna.Trial, n_trials: int, k: int,
               lock: Callable[[], contextlib.AbstractContextManager] | None, report: WorkerReport,
               echo: Callable[[str], None] | None) -> list[TrialOutcome]:
    """Claim up to ``k`` trials (``first`` included), drawing each config before the next ``ask``,
    then train them grouped by structure (:mod:`training.search.batch`) under one heartbeat each.
    A SIGKILL loses the trials in hand: they stay RUNNING with this process as owner, and the next
    start fails and re-queues them like a lone trial."""
    study, storage = handle.study, handle.storage
    outcomes: list[TrialOutcome] = []
    prepared: list[Prepared] = []
    with contextlib.ExitStack() as beats:
        trial: optuna.Trial | None = first
        try:
            while trial is not None:
                beats.enter_context(heartbeat(storage, trial))
                ready = runner.prepare(trial, echo)  # an interrupt here concludes this trial itself
                (outcomes if isinstance(ready, TrialOutcome) else prepared).append(ready)
                if len(prepared) + len(outcomes) >= k:
                    break
                trial = _claim(study, storage, n_trials, lock, runner)
                if trial is not None and lock is None and _past_target(study, trial, n_trials):
                    with runner.storage_timer():
                        _void(study, trial)
                    report.n_void += 1
                    trial = None
        except KeyboardInterrupt:
            for p in prepared:
                runner.interrupted(p, echo)
            raise
        if prepared and echo is not None and len(prepared) > 1:
            echo(f"{study.study_name}: training trials {[p.trial.number for p in prepared]} "
                 f"in {len(batch.groups(prepared))} group(s)")
        outcomes.extend(batch.run_batch(runner, prepared, echo))
    return outcomes


def _check_failure_streak(outcomes: list[TrialOutcome], limit: int, study_name: str) -> None:
    streak = 0
    for outcome in reversed(outcomes):
        if outcome.state != TrialState.FAIL or outcome.wasted == waste.INFEASIBLE:
            break
        streak += 1
    if limit and streak >= limit:
        raise TierHpoError(f"the last {streak} trials of study {study_name} all failed (last: "
                           f"{outcomes[-1].message.strip()}); fix the cause, then run the same command to resume")


def _hpo_view(data: TierData) -> TierData:
    """``data`` cut just after the validation split: the test rows are not even in memory for HPO."""
    if "test" not in data.split_ends:
        return data
    last = max(int(data.split_ends[s].max()) for s in ("train", "val") if len(data.split_ends[s]))
    stop = last + 1
    return dataclasses.replace(
        data, features=data.features[:stop], labels=data.labels[:stop], dates=data.dates[:stop],
        split_ends={s: data.split_ends[s] for s in ("train", "val")},
    )
