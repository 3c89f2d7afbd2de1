"""Opening a study and running it: the Python API behind ``tierhpo hpo`` (and, for scale-out, each
worker process of ``training.search.workers``).

* ``spec = StudySpec.from_params(...)`` or ``StudySpec(...)`` (``training.search.spec``): everything
  that defines a study, and its name.
* ``open_study(spec, storage_url, settings)`` creates or loads the study (idempotent) and returns a
  ``StudyHandle``; ``reconcile_runs`` makes trial runs agree with it.
* ``run_worker(spec, data, n_trials, storage_url, worker_index=i, lock=...)`` opens the study and
  runs the worker loop (``training.search.worker.fill``) until it has ``n_trials`` COMPLETE trials.
* ``run_study(spec, data, n_trials, storage_url)`` = ``open_study`` + ``run_worker`` +
  ``training.search.results.finalize_study`` (summary, wasted figures, plots and parent-run
  closing); ``training.search.results.write_outputs`` then writes ``best.json``, ``model.pt``,
  ``metrics.json``, ``trials.csv``.

Resume: the same spec gives the same name, so running again loads the study and runs only the
missing trials. Crash safety: RDB storage with heartbeats; a stale trial is failed, re-queued
(``optuna.storages.RetryHeartbeatStaleTrialCallback``) and its MLflow run closed
(``training.search.liveness``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from common import paths, provenance
from common.errors import TierHpoError
from common.redact import redact
from training.dataset import TierData
from training.search import storage as storage_module
from training.search.forced import enqueue_forced
from training.search.liveness import StaleTrialHandler
from training.search.sampler import CoverageSampler, SeededRandomSampler, SeededTPESampler
from training.search.spec import SPEC_ATTR, Engine, StudySpec, build_engine
from training.search.storage import make_storage
from training.search.tracking import PARENT_ATTR, RUN_ATTR, TRIAL_TAG, StudyTracking, best_metrics
from training.search.worker import StudyHandle, WorkerReport, WorkerSettings, fill

__all__ = ["SPEC_ATTR", "StudyHandle", "StudySpec", "WorkerReport", "WorkerSettings", "base_tags", "build_engine", "check_joinable",
           "open_study", "reconcile_runs", "run_study", "run_worker"]


def base_tags(spec: StudySpec, study_name: str) -> dict[str, str]:
    return {"tier": spec.tier, "budget": spec.budget, "horizon": str(spec.horizon), "study_name": study_name,
            "symbol": spec.symbol, **provenance.run_tags()}


def _sampler(engine: Engine, worker_index: int) -> optuna.samplers.BaseSampler:
    spec = engine.spec
    if spec.sampler == "random":
        return SeededRandomSampler(seed=spec.seed)  # reseeded per trial (see sampler.sampling_index)
    if spec.sampler == "tpe":
        return SeededTPESampler(seed=spec.seed)
    return CoverageSampler(engine.space, engine.tracker, seed=spec.seed, target=spec.coverage.target,
                           candidates=spec.coverage.candidates, feasibility=engine.feasibility,
                           worker_index=worker_index)


OBJECTIVE_NAMES = ["val/auc"]  # what the single objective is, for Optuna's dashboard and plots


def _set_metric_names(study: optuna.Study) -> None:
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names(OBJECTIVE_NAMES)


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
        if study.metric_names != OBJECTIVE_NAMES:
            _set_metric_names(study)
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
                  "space": engine.space.fingerprint_text(), "tier_version": spec.tier_version,
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
        metrics = {**best_metrics(trial.user_attrs.get("metrics") or {}), "objective": trial.value, "epochs": epochs}
        handle.tracking.mark_finished(run.info.run_id, metrics, {
            "state": "COMPLETE", "wasted_reason": trial.user_attrs.get("wasted") or "none", "closed_by": "reconcile"},
            step=epochs)
        closed += 1
    return closed

def run_worker(spec: StudySpec, data: TierData, n_trials: int, storage_url: str | None = None, *,
               settings: WorkerSettings | None = None, worker_index: int = 0,
               lock: Callable[[], contextlib.AbstractContextManager] | None = None,
               echo: Callable[[str], None] | None = None, handle: StudyHandle | None = None) -> WorkerReport:
    """Run trials of ``spec``'s study until it has ``n_trials`` COMPLETE trials (``worker.fill``)."""
    if n_trials < 1:
        raise TierHpoError(f"--trials must be >= 1, got {n_trials}")
    settings = settings or WorkerSettings()
    handle = handle or open_study(spec, storage_url, settings, worker_index=worker_index, lock=lock)
    return fill(handle, data, n_trials, settings=settings, lock=lock, echo=echo,
                base_tags=base_tags(spec, handle.study.study_name))


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


def _identity_diff(stored: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    keys = sorted(k for k in set(stored) | set(ours) if stored.get(k) != ours.get(k))
    out = []
    for key in keys:
        a, b = stored.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"{key} ({', '.join(map(str, inner[:6]))})" if inner else key)
        else:
            out.append(key)
    return out


def check_joinable(spec: StudySpec, url: str) -> None:
    """For a worker that must join an existing study (``--join``): raise unless ``spec``'s study
    exists in ``url``. When it does not, name the sibling studies (same tier, budget, horizon)
    and what differs from each. Reads only: creates no table, no study."""
    import sqlalchemy

    name = spec.study_name
    engine = storage_module._engine(url)
    try:
        has_tables = sqlalchemy.inspect(engine).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise storage_module.connection_error(url, exc) from None
    finally:
        engine.dispose()
    where = redact(url)
    if not has_tables:
        raise TierHpoError(f"--join: {where} holds no Optuna study yet; start the first workers without --join")
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        if storage_module.study_exists(storage, name):
            return
        prefix = name.rsplit("-", 1)[0] + "-"
        ours = json.loads(json.dumps(spec.identity(), default=str))
        siblings = [s for s in storage.get_all_studies() if s.study_name.startswith(prefix)]
        if not siblings:
            raise TierHpoError(f"--join: no study {prefix}* in {where}; start the first workers without --join")
        sibling = max(siblings, key=lambda s: s._study_id)
        diff = _identity_diff(sibling.user_attrs.get(SPEC_ATTR) or {}, ours)
        raise TierHpoError(
            f"--join: study {sibling.study_name} in {where} was created with a different "
            f"{'search space' if any(d.startswith('space') for d in diff) else 'configuration'} "
            f"(differs in: {'; '.join(diff) or 'unknown'}); use the params.yaml it was started with"
        )
    finally:
        storage.remove_session()
        storage.engine.dispose()
