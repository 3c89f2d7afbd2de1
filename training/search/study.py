"""A study: its identity (``StudySpec`` -> name), its storage, and the worker loop that fills it.

Python API (also used by ``tierhpo hpo`` and, for scale-out, by several worker processes):

* ``spec = StudySpec.from_params(...)`` or ``StudySpec(...)``: everything that defines a study.
  ``spec.study_name`` is ``"{tier}-{budget}-h{horizon}-{hash}"``; the hash covers the search space,
  the model/trainer/metric settings that change results, the data version, the seed, the forced
  phase, the coverage and pruner settings and the sampler. Not covered: the number of trials (so a
  larger ``--trials`` extends a study), threads, storage and tracking locations.
* ``run_study(spec, data, n_trials, storage_url)`` = ``prepare_study`` + ``run_worker`` + ``finalize_study``.
* ``run_worker(spec, data, n_trials, storage_url, worker_index=i, lock=...)`` runs trials until the
  study has ``n_trials`` COMPLETE ones. Before each ``ask`` it fails stale trials (heartbeat, and
  at once for a dead process on this host), then claims a slot only if COMPLETE + RUNNING <
  ``n_trials``; when running trials hold the remaining slots it waits, since one of them may still
  fail and need a retry. ``lock`` (a context-manager factory, e.g. a PostgreSQL advisory lock) makes
  check-and-ask atomic across workers; without one, a worker that finds itself past the budget
  right after ``ask`` gives its trial back as "void" (and re-queues a config it had popped).
* ``finalize_study(...) -> StudyResult``: summary, wasted figures, plots and parent-run closing;
  ``training.search.outputs.write_outputs`` writes ``best.json``, ``model.pt``, ``metrics.json``, ``trials.csv``.

Resume: the same spec gives the same name, so running again loads the study and runs only the
missing trials. Crash safety: RDB storage with heartbeats; a stale trial is failed, re-queued
(``optuna.storages.RetryHeartbeatStaleTrialCallback``) and its MLflow run closed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from evaluation.metrics import MetricsParams
from common import paths, provenance
from common.errors import TierHpoError
from training.budget import ModelParams, format_budget, parse_budget
from training.dataset import TierData
from training.search import waste
from training.search.config import HpoConfig, PrunerConfig, StorageConfig
from training.search.coverage import CoverageConfig, CoverageTracker
from training.search.feasibility import Feasibility
from training.search.forced import enqueue_forced, forced_configs
from training.search.objective import (
    ARCH_PARAMS,
    STRUCTURAL,
    TrialOutcome,
    TrialRunner,
    owner_gone,
    worker_info,
)
from training.search.sampler import CoverageSampler, derived_seed
from training.search.space import SearchSpace
from training.search.tracking import PARENT_ATTR, RUN_ATTR, TRIAL_TAG, StudyTracking
from training.trainer import TrainConfig

log = logging.getLogger(__name__)

SPEC_ATTR = "tierhpo_spec"
Sampler = Literal["coverage", "tpe", "random"]
_NOT_HASHED_TRAIN = ("progress", "eval_batch_size", "max_memory_gb")  # do not change results


@dataclass(frozen=True)
class StudySpec:
    tier: str
    budget: str
    horizon: int
    space: SearchSpace
    n_features: int
    context_len: int
    data_version: str  # content hash of the tier data the study trains on
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsParams = field(default_factory=MetricsParams)
    seed: int = 0
    forced: int = 6
    forced_inset: float = 0.1
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    late_prune_fraction: float = 0.5
    sampler: Sampler = "coverage"  # "tpe" / "random": the benchmark's baselines (no steering, no repair)
    symbol: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", format_budget(parse_budget(self.budget)))
        unknown = [n for n in self.space.names
                   if n not in ARCH_PARAMS and n not in {f.name for f in dataclasses.fields(TrainConfig)}]
        if unknown:
            raise TierHpoError(
                f"hpo.space: {unknown} are neither architecture parameters {list(ARCH_PARAMS)} nor fields of "
                "training.trainer.TrainConfig; rename or remove them"
            )
        if self.sampler not in ("coverage", "tpe", "random"):
            raise TierHpoError(f"unknown sampler {self.sampler!r}; use coverage, tpe or random")

    @classmethod
    def from_params(cls, hpo: HpoConfig, *, tier: str, budget: str, horizon: int, data: TierData,
                    data_version: str, model: ModelParams, train: TrainConfig, metrics: MetricsParams,
                    symbol: str = "") -> StudySpec:
        return cls(
            tier=tier, budget=budget, horizon=horizon, space=SearchSpace.from_config(hpo.space),
            n_features=data.n_features, context_len=data.context_len, data_version=data_version,
            model=model, train=train, metrics=metrics, seed=hpo.seed, forced=hpo.forced,
            forced_inset=hpo.forced_inset, coverage=hpo.coverage, pruner=hpo.pruner,
            late_prune_fraction=hpo.late_prune_fraction, symbol=symbol,
        )

    def identity(self) -> dict[str, Any]:
        """What the study name's hash covers (stored in the study, checked on every load)."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _NOT_HASHED_TRAIN}
        return {
            "tier": self.tier, "budget": self.budget, "horizon": self.horizon, "symbol": self.symbol,
            "space": self.space.to_json(), "n_features": self.n_features, "context_len": self.context_len,
            "data_version": self.data_version, "model": dataclasses.asdict(self.model), "train": train,
            "metrics": dataclasses.asdict(self.metrics), "seed": self.seed, "forced": self.forced,
            "forced_inset": self.forced_inset, "coverage": dataclasses.asdict(self.coverage),
            "pruner": dataclasses.asdict(self.pruner), "late_prune_fraction": self.late_prune_fraction,
            "sampler": self.sampler,
        }

    @property
    def study_name(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return f"{self.tier}-{self.budget}-h{self.horizon}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Engine:
    """What a process derives from a spec once: the budget-feasible space, coverage bins, forced points."""

    spec: StudySpec
    space: SearchSpace  # the declared space without values no feasible architecture uses
    feasibility: Feasibility
    tracker: CoverageTracker
    forced: list[dict[str, Any]]


def build_engine(spec: StudySpec) -> Engine:
    def fits(arch: dict[str, Any]) -> bool:
        return spec.model.solve(spec.budget, spec.n_features, spec.context_len, **arch) is not None

    structural = tuple(n for n in STRUCTURAL if n in spec.space)
    feasibility = Feasibility.build(spec.space, structural, fits, what=f"budget {spec.budget}")
    space = feasibility.restrict(spec.space)  # baselines (tpe/random) search it too, without the joint repair
    tracker = CoverageTracker(space, spec.coverage.bins, spec.coverage.pairs, feasibility)
    forced = forced_configs(space, spec.forced, spec.forced_inset, feasibility) if spec.forced else []
    return Engine(spec, space, feasibility, tracker, forced)


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


# ---------------------------------------------------------------------- storage


def redact(url: str) -> str:
    """The storage URL without credentials (user and password), as written to best.json and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(username=None, password=None).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say so without echoing it
        return "<unparseable storage URL>"


def _sqlite_wal(url: str) -> None:
    """Put a SQLite study database in WAL mode (persistent in the file): one fsync per commit
    instead of several, and readers never block the writer. Safe for several processes on one host."""
    import sqlite3

    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def make_storage(url: str, cfg: StorageConfig, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> RDBStorage:
    """RDB storage with heartbeats; a bad or unreachable URL is one actionable line (the URL
    checks and messages are ``storage_checks``'; ``postgresql://`` is mapped to psycopg2)."""
    import sqlalchemy.exc

    from training.search import storage_checks

    url = storage_checks.normalize_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        try:
            _sqlite_wal(url)
        except Exception as exc:
            raise TierHpoError(storage_checks.describe_connection_error(url, exc)) from None
        engine_kwargs = {"connect_args": {"timeout": 60}}  # wait for another worker's write lock
    else:
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=cfg.heartbeat_interval,
                              grace_period=cfg.grace_period, heartbeat_stale_trial_callback=on_stale)
        except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
            raise TierHpoError(storage_checks.describe_connection_error(url, exc)) from None


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
      first write) once they are older than twice the grace period.

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
        if not orphan and not owner_gone(owner or {}, me):
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
        thread.join()


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


# ---------------------------------------------------------------------- opening a study


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


def base_tags(spec: StudySpec, study_name: str) -> dict[str, str]:
    return {"tier": spec.tier, "budget": spec.budget, "horizon": str(spec.horizon), "study_name": study_name,
            "symbol": spec.symbol, **provenance.run_tags()}


def _sampler(engine: Engine, worker_index: int) -> optuna.samplers.BaseSampler:
    spec = engine.spec
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=derived_seed(spec.seed, worker_index))
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=derived_seed(spec.seed, worker_index))
    return CoverageSampler(engine.space, engine.tracker, seed=spec.seed, target=spec.coverage.target,
                           candidates=spec.coverage.candidates, feasibility=engine.feasibility,
                           worker_index=worker_index)


def open_study(spec: StudySpec, storage_url: str | None = None, settings: WorkerSettings | None = None,
               *, worker_index: int = 0, lock: Callable[[], contextlib.AbstractContextManager] | None = None,
               engine: Engine | None = None) -> StudyHandle:
    """Create or load the study (idempotent): check its identity, enqueue missing forced points,
    open (or find, or create) the MLflow parent run and close runs a dead process left RUNNING."""
    settings = settings or WorkerSettings()
    url = storage_url or paths.optuna_storage_url()
    engine = engine or build_engine(spec)
    handler = StaleTrialHandler(settings.storage.max_retry)
    storage = make_storage(url, settings.storage, handler)
    name = spec.study_name
    sampler = _sampler(engine, worker_index)
    pruner = spec.pruner.build(spec.train.max_epochs)
    with (lock or contextlib.nullcontext)():
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize", load_if_exists=True)
        identity = json.loads(json.dumps(spec.identity(), default=str))
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            study.set_user_attr(SPEC_ATTR, identity)
        elif stored != identity:
            changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
            raise TierHpoError(f"study {name} exists with different settings ({', '.join(changed)}); "
                               "restore them or delete the study from the storage")
        if engine.forced:
            enqueue_forced(study, engine.forced)
        tracking = StudyTracking(name, spec.tier, tracking_uri=settings.tracking_uri)
        handler.tracking = tracking
        params = {"study_name": name, "storage": redact(url), "seed": spec.seed, "forced": spec.forced,
                  "sampler": spec.sampler, "pruner": spec.pruner.kind, "coverage_target": spec.coverage.target,
                  "space": engine.space.fingerprint_text(), "data_version": spec.data_version,
                  "feasible_architectures": len(engine.feasibility.combos)}
        parent = tracking.open_parent(study.user_attrs.get(PARENT_ATTR), params, base_tags(spec, name))
        if study.user_attrs.get(PARENT_ATTR) != parent:
            study.set_user_attr(PARENT_ATTR, parent)
            study.set_user_attr("mlflow_experiment_id", tracking.experiment_id)
    handle = StudyHandle(spec, engine, storage, url, study, tracking, handler, sampler)
    reconcile_runs(handle)
    return handle


def reconcile_runs(handle: StudyHandle) -> int:
    """Make trial runs agree with the study: close runs left RUNNING by a process that died after
    ``tell`` (or before writing its run id), and finish runs closed as FAILED whose trial is COMPLETE."""
    states = {t.number: t for t in handle.study.get_trials(deepcopy=False)}
    closed = 0
    def trial_of(run: Any) -> FrozenTrial | None:
        number = run.data.tags.get(TRIAL_TAG)
        return states.get(int(number)) if number and number.isdigit() else None

    for run in handle.tracking.running_trial_runs():
        trial = trial_of(run)
        if trial is not None and trial.state == TrialState.RUNNING and trial.user_attrs.get(RUN_ATTR) == run.info.run_id:
            continue  # still being worked on (or stale: the heartbeat will fail it and close the run)
        state = trial.state.name if trial is not None else "UNKNOWN"
        status = "FINISHED" if trial is not None and trial.state == TrialState.COMPLETE and \
            trial.user_attrs.get(RUN_ATTR) == run.info.run_id else "KILLED"
        handle.tracking.close_run(run.info.run_id, status, {"state": state, "closed_by": "reconcile"})
        closed += 1
    # A worker that lost the storage while telling COMPLETE (the commit landed, the reply did not)
    # closed its run as FAILED; the study is the record, so the run follows it.
    for run in handle.tracking.trial_runs_with_status("FAILED", "KILLED"):
        trial = trial_of(run)
        if trial is None or trial.state != TrialState.COMPLETE or trial.user_attrs.get(RUN_ATTR) != run.info.run_id:
            continue
        info = trial.user_attrs.get("info") or {}
        epochs = info["epochs"] if isinstance(info.get("epochs"), int) else 0
        metrics = {**(trial.user_attrs.get("metrics") or {}), "objective": trial.value, "epochs": epochs}
        handle.tracking.mark_finished(run.info.run_id, metrics, {
            "state": "COMPLETE", "wasted_reason": trial.user_attrs.get("wasted") or "none", "closed_by": "reconcile"},
            step=epochs)
        closed += 1
    return closed


# ---------------------------------------------------------------------- the worker loop


def _budget_left(trials: list[FrozenTrial], n_trials: int) -> tuple[int, int]:
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    running = sum(t.state == TrialState.RUNNING and not waste.is_void(t) for t in trials)
    return complete, running


def _over_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    complete, _ = _budget_left(trials, n_trials)
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


def run_worker(spec: StudySpec, data: TierData, n_trials: int, storage_url: str | None = None, *,
               settings: WorkerSettings | None = None, worker_index: int = 0,
               lock: Callable[[], contextlib.AbstractContextManager] | None = None,
               echo: Callable[[str], None] | None = None, handle: StudyHandle | None = None) -> WorkerReport:
    """Run trials of ``spec``'s study until it has ``n_trials`` COMPLETE trials (see module doc)."""
    if n_trials < 1:
        raise TierHpoError(f"--trials must be >= 1, got {n_trials}")
    settings = settings or WorkerSettings()
    handle = handle or open_study(spec, storage_url, settings, worker_index=worker_index, lock=lock)
    study, storage, tracking = handle.study, handle.storage, handle.tracking
    runner = TrialRunner(handle.engine, study, _hpo_view(data), tracking, handle.sampler,
                         log_every_s=settings.log_every_s, progress=settings.progress,
                         checkpoints=settings.checkpoints, base_tags=base_tags(spec, study.study_name))
    report = WorkerReport()
    started = time.perf_counter()
    status = "FAILED"
    try:
        with sigterm_as_interrupt():
            while True:
                with (lock or contextlib.nullcontext)(), runner.storage_timer():
                    complete, running = _budget_left(fail_dead_trials(study, storage, handle.handler), n_trials)
                    trial = _ask(study) if complete + running < n_trials else None
                    if trial is not None:  # claim it at once: owner for dead-process checks, first heartbeat
                        trial.set_user_attr("worker", worker_info())
                        if storage.get_heartbeat_interval():
                            storage.record_heartbeat(trial._trial_id)
                if complete >= n_trials:
                    break
                if trial is None:  # the last slots are held by running trials that may still fail
                    time.sleep(settings.storage.poll_seconds)
                    continue
                if lock is None and _over_budget(study, trial, n_trials):
                    with runner.storage_timer():
                        _void(study, trial)
                    report.n_void += 1
                    continue
                if echo is not None:  # the batch's progress: how many trials of how many
                    echo(f"{study.study_name}: {complete}/{n_trials} trials complete, starting trial {trial.number}")
                with heartbeat(storage, trial):
                    outcome = runner.run(trial, echo)
                report.outcomes.append(outcome)
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


def run_study(spec: StudySpec, data: TierData, n_trials: int, storage_url: str | None = None, *,
              settings: WorkerSettings | None = None, echo: Callable[[str], None] | None = None,
              plots: bool = True) -> Any:
    """Open (or resume) the study, run it to ``n_trials`` COMPLETE trials in this process, and
    summarise it. Returns a :class:`training.search.results.StudyResult` (with ``.report``)."""
    from training.search.results import finalize_study

    handle = open_study(spec, storage_url, settings)
    report = run_worker(spec, data, n_trials, storage_url, settings=settings, echo=echo, handle=handle)
    result = finalize_study(handle, n_trials, plots=plots)
    result.report = report
    return result
