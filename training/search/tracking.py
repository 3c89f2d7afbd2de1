"""MLflow side of a study: one experiment per tier, one parent run per study, one nested run per trial.

Everything goes through ``MlflowClient`` with explicit run ids, never the fluent "active run"
API, so the parent link (``mlflow.parentRunId``) holds whichever process or worker runs a trial.
The parent's run id is stored in the study's user attributes; every worker and every resume reuses it.

Under ``mlflow run`` (``MLFLOW_RUN_ID`` set for the entry process) the study's parent run is
created in that run's experiment and nested under it; the outer run itself is left to ``mlflow run``.

Run statuses follow the trial: FINISHED (complete), KILLED (pruned, interrupted, worker died),
FAILED (exception, NaN loss, infeasible). Callers end runs in ``finally`` blocks, and
:func:`training.search.study.reconcile_runs` closes any run a killed process left RUNNING.

Metric layout (one key, one meaning, so no chart mixes two things under one name):

* per-epoch curves: ``val/auc``, ``train/loss``, ... with ``step=epoch`` (:meth:`TrialRun.log_epoch`);
* the trial's best-epoch summary (Optuna's value): ``best/val/auc``, ``best/val/loss``, ... (:func:`best_metrics`),
  plus ``objective`` and ``epochs``;
* coverage after a trial: params ``coverage.<axis>`` and the ``coverage.json`` artifact, never metrics;
  the parent run carries the study's coverage table (``coverage.json`` and ``coverage.md``);
* ``n_params`` is a param.

Experiments are tagged ``mlflow.experimentKind=custom_model_development`` (the ML kind, shown as such in
the experiment list). MLflow 3.17's UI still opens an experiment on its GenAI overview unless the URL
carries ``?workflowType=machine_learning`` (tests/test_browser.py): the README gives that link.

Per-epoch step metrics are buffered and flushed at most every ``log_every_s`` seconds (and at the
end of the trial): one ``log_batch`` per flush keeps the tracking overhead small for short epochs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from common import paths, store_init
from common.errors import TierHpoError
from common.mlflow_runs import log_batch

if TYPE_CHECKING:  # annotations only; the client comes from store_init.mlflow_client
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "tierhpo.role"  # "study" | "trial"
STUDY_TAG = "tierhpo.study"
TRIAL_TAG = "tierhpo.trial_number"
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr
EXPERIMENT_ATTR = "mlflow_experiment_id"
RUN_ATTR = "mlflow_run_id"  # trial user attr
BEST_PREFIX = "best/"  # best-epoch summary metrics: best/val/auc, ...; per-epoch curves keep val/auc
# What the MLflow 3 UI reads to choose an experiment's view (mlflow/server/js: ExperimentKind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
ML_EXPERIMENT_KIND = "custom_model_development"


def best_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A trial's best-epoch metrics under their summary keys (``val/auc`` -> ``best/val/auc``)."""
    return {k if k.startswith(BEST_PREFIX) else f"{BEST_PREFIX}{k}": v for k, v in metrics.items()}


def coverage_params(coverage_metrics: Mapping[str, float]) -> dict[str, str]:
    """Coverage fractions as run params: ``coverage/overall`` -> ``coverage.overall``."""
    return {"coverage." + k.split("/", 1)[-1]: f"{float(v):.4f}" for k, v in coverage_metrics.items()}


def mark_ml_experiment(client: MlflowClient, experiment_id: str, tags: Mapping[str, str] | None = None) -> None:
    """Tag an experiment as a model-training one (the MLflow 3 UI then opens it on its runs);
    nothing is written when the tag is already there."""
    current = tags if tags is not None else client.get_experiment(experiment_id).tags
    if current.get(EXPERIMENT_KIND_TAG) != ML_EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND)


def create_ml_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """``create_experiment`` with the ML-view tag."""
    return client.create_experiment(name, artifact_location=artifact_location,
                                    tags={EXPERIMENT_KIND_TAG: ML_EXPERIMENT_KIND})


def experiment_name(tier: str) -> str:
    return f"tierhpo-{tier}"


def _local_store(uri: str) -> bool:
    """Database/file stores keep artifacts where we say; servers (http, databricks) decide themselves."""
    return urlparse(uri).scheme in ("", "file", "sqlite", "postgresql", "mysql", "mssql")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _str(value: Any) -> str:
    return str(value)[:6000]


class Timer:
    """Seconds spent inside tracking calls (the overhead the benchmark reports)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


class StudyTracking:
    def __init__(self, study_name: str, tier: str, *, tracking_uri: str | None = None) -> None:
        self.uri = tracking_uri or paths.mlflow_tracking_uri()
        self.client = store_init.mlflow_client(self.uri)
        self.study_name, self.tier = study_name, tier
        self.timer = Timer()
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    # ------------------------------------------------------------------ experiment and parent

    def _outer_run(self) -> Any | None:
        run_id = os.environ.get("MLFLOW_RUN_ID")
        if not run_id:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            log.warning("MLFLOW_RUN_ID=%s is not a run of %s; not nesting the study under it", run_id, self.uri)
            return None

    def ensure_experiment(self) -> str:
        name = experiment_name(self.tier)
        with self.timer():
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = f"{paths.mlflow_artifact_root()}/{name}" if _local_store(self.uri) else None
                try:
                    return create_ml_experiment(self.client, name, location)
                except MlflowException:  # created meanwhile by another worker
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            mark_ml_experiment(self.client, exp.experiment_id, exp.tags)
            return exp.experiment_id

    def open_parent(self, stored_run_id: str | None, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The study's parent run: the stored one if it still exists, else a found or new one; set RUNNING."""
        with self.timer():
            run = self._existing(stored_run_id)
            if run is None:
                outer = self._outer_run()
                if outer is not None:
                    mark_ml_experiment(self.client, outer.info.experiment_id)
                self.experiment_id = outer.info.experiment_id if outer else self.ensure_experiment()
                run = self._find_parent() or self._create_parent(outer, params, tags)
            self.experiment_id = run.info.experiment_id
            self.parent_run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
        return self.parent_run_id

    def _existing(self, run_id: str | None) -> Any | None:
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            log.warning("parent run %s of study %s is not in %s; creating a new one", run_id, self.study_name, self.uri)
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _find_parent(self) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study_name}' and tags.`{ROLE_TAG}` = 'study'",
            order_by=["attributes.start_time ASC"],
            max_results=10,
        )
        # Two workers may race to create it: the earliest wins everywhere.
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None

    def _create_parent(self, outer: Any | None, params: Mapping[str, Any], tags: Mapping[str, str]) -> Any:
        all_tags = {**tags, ROLE_TAG: "study", STUDY_TAG: self.study_name}
        if outer is not None:
            all_tags[PARENT_TAG] = outer.info.run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=self.study_name)
        self._log_batch(run.info.run_id, params={k: _str(v) for k, v in params.items()})
        winner = self._find_parent()
        if winner is not None and winner.info.run_id != run.info.run_id:
            self.client.delete_run(run.info.run_id)
            return winner
        return run

    def finish_parent(self, status: str, metrics: Mapping[str, float], tags: Mapping[str, str],
                      artifacts: list[tuple[str, Path]] | None = None, dicts: Mapping[str, Any] | None = None,
                      texts: Mapping[str, str] | None = None) -> None:
        """Log the study summary to the parent run and end it with ``status``."""
        assert self.parent_run_id is not None
        with self.timer():
            self._log_batch(self.parent_run_id, metrics=_finite(metrics), tags=tags)
            for artifact_dir, local in artifacts or []:
                self.client.log_artifact(self.parent_run_id, str(local), artifact_dir or None)
            for name, obj in (dicts or {}).items():
                self.client.log_dict(self.parent_run_id, obj, name)
            for name, text in (texts or {}).items():
                self.client.log_text(self.parent_run_id, text, name)
            self.client.set_terminated(self.parent_run_id, status)

    def set_parent_status(self, status: str) -> None:
        if self.parent_run_id is not None:
            with self.timer():
                self.client.set_terminated(self.parent_run_id, status)

    # ------------------------------------------------------------------ trials

    def start_trial(self, number: int, params: Mapping[str, Any], tags: Mapping[str, str],
                    log_every_s: float = 15.0, metrics: Mapping[str, float] | None = None) -> TrialRun:
        assert self.parent_run_id is not None and self.experiment_id is not None
        with self.timer():
            all_tags = {**tags, PARENT_TAG: self.parent_run_id, ROLE_TAG: "trial", STUDY_TAG: self.study_name,
                        TRIAL_TAG: str(number)}
            run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=f"trial-{number:03d}")
            self._log_batch(run.info.run_id, metrics=_finite(metrics or {}),
                            params={k: _str(v) for k, v in params.items()})
        return TrialRun(self, run.info.run_id, log_every_s)

    def close_run(self, run_id: str, status: str, tags: Mapping[str, str]) -> None:
        """End a run another process left RUNNING (its trial was failed by heartbeat or is finished)."""
        with self.timer():
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                return
            if run.info.status == "RUNNING":
                self._log_batch(run_id, tags=tags)
                self.client.set_terminated(run_id, status)

    def mark_finished(self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str], step: int) -> None:
        """Turn a trial run that was closed as FAILED/KILLED into FINISHED, with its final metrics
        logged at ``step`` (its last epoch) like :meth:`TrialRun.end` does."""
        with self.timer():
            stamp = _now_ms()
            self._log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in _finite(metrics).items()],
                            tags=tags)
            self.client.set_terminated(run_id, "FINISHED")

    def running_trial_runs(self) -> list[Any]:
        """Trial runs of this study still marked RUNNING."""
        return self.trial_runs_with_status("RUNNING")

    def trial_runs_with_status(self, *statuses: str) -> list[Any]:
        """Trial runs of this study whose MLflow status is one of ``statuses`` (one query each:
        MLflow's search has no IN for ``status``)."""
        if self.parent_run_id is None:
            return []
        with self.timer():
            return [run for status in statuses for run in self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and attributes.status = '{status}'",
                max_results=1000,
            )]

    def _log_batch(self, run_id: str, metrics: Mapping[str, float] | list[Metric] | None = None,
                   params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> None:
        if isinstance(metrics, Mapping):
            stamp = _now_ms()
            metrics = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        log_batch(self.client, run_id, metrics=list(metrics or []),
                  params=[Param(k, v) for k, v in (params or {}).items()],
                  tags=[RunTag(k, _str(v)) for k, v in (tags or {}).items()])


class TrialRun:
    """The nested run of one trial. Use :meth:`end` exactly once (callers do it in ``finally``)."""

    def __init__(self, tracking: StudyTracking, run_id: str, log_every_s: float) -> None:
        self.tracking, self.run_id, self.log_every_s = tracking, run_id, log_every_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._last_step, self._last_stamp = 0, 0
        self.ended = False

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        with self.tracking.timer():
            stamp = _now_ms()
            self._last_step, self._last_stamp = max(self._last_step, step), stamp
            self._pending += [Metric(k, float(v), stamp, step) for k, v in _finite(metrics).items()]
            if time.monotonic() - self._last_flush >= self.log_every_s:
                self.flush()

    def flush(self) -> None:
        with self.tracking.timer():
            if self._pending:
                self.tracking._log_batch(self.run_id, metrics=self._pending)
                self._pending = []
            self._last_flush = time.monotonic()

    def log_state_dict(self, state_dict: Mapping[str, Any], artifact_file: str = "checkpoint/model.pt") -> None:
        import torch

        with self.tracking.timer(), tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            torch.save(dict(state_dict), local)
            self.tracking.client.log_artifact(self.run_id, str(local), str(Path(artifact_file).parent))

    def end(self, status: str, metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None,
            dicts: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None) -> None:
        """Flush step metrics, log the final ``metrics``/``tags``/``params`` (one request) and JSON ``dicts``,
        then set the final status. Idempotent; the status is set even if logging fails."""
        if self.ended:
            return
        self.ended = True
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise TierHpoError(f"unknown MLflow run status {status}")
        with self.tracking.timer():
            try:
                # Summary keys (best/val/auc, objective, epochs) are distinct from the per-epoch
                # curves (val/auc at step=epoch), so no chart joins the two; they sit at the last
                # epoch's step so a step-axis chart of them lines up with the curves.
                stamp = max(_now_ms(), self._last_stamp + 1)
                final = self._pending + [Metric(k, v, stamp, self._last_step)
                                         for k, v in _finite(metrics or {}).items()]
                self._pending = []
                self.tracking._log_batch(self.run_id, metrics=final, tags=tags,
                                         params={k: _str(v) for k, v in (params or {}).items()})
                for name, obj in (dicts or {}).items():
                    self.tracking.client.log_dict(self.run_id, obj, name)
            finally:
                self.tracking.client.set_terminated(self.run_id, status)


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    import math

    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
