"""The MLflow run of a pipeline stage: one way to create it, nest it, batch its logs and end it.

A stage run is created with the client, never ``mlflow.start_run()``: under ``mlflow run`` the
entry process has ``MLFLOW_RUN_ID`` set, and ``start_run`` would *resume* that run instead of
nesting under it. So the parent is resolved here, once, for every stage: a ``MLFLOW_RUN_ID`` that
is not a run of the tracking store is a one-line error (it names the store and what to do), never
a silent un-nested run. The run always ends FINISHED, FAILED or KILLED, never RUNNING.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from common import paths, provenance
from common.errors import TierHpoError
from common.redact import redact

PARENT_TAG = "mlflow.parentRunId"
_taken: dict[str, str] = {}  # MLFLOW_RUN_ID once a stage run took it from the environment (see below)


def parent_run(client: Any) -> tuple[str | None, str | None]:
    """``(experiment_id, run_id)`` of ``MLFLOW_RUN_ID``, or ``(None, None)`` when it is not set."""
    from mlflow.exceptions import MlflowException

    outer = os.environ.get("MLFLOW_RUN_ID") or _taken.get("outer")
    if not outer:
        return None, None
    try:
        return str(client.get_run(outer).info.experiment_id), outer
    except MlflowException:
        raise TierHpoError(f"MLFLOW_RUN_ID={outer[:80]} is not a run of the tracking store "
                           f"{redact(paths.mlflow_tracking_uri())}; unset it or fix MLFLOW_TRACKING_URI") from None


def log_batch(client: Any, run_id: str, metrics: list[Any] = (), params: list[Any] = (), tags: list[Any] = ()) -> None:
    """``client.log_batch`` in as few requests as MLflow's per-request limits allow (params and
    tags go first). Each request costs tens of ms on a SQLite store whatever its size, so every
    tierhpo run logs through this one place."""
    from mlflow.utils import validation as limits

    per_kind = {"params": limits.MAX_PARAMS_TAGS_PER_BATCH, "tags": limits.MAX_PARAMS_TAGS_PER_BATCH,
                "metrics": limits.MAX_METRICS_PER_BATCH}
    items = {"params": list(params), "tags": list(tags), "metrics": list(metrics)}
    while any(items.values()):
        room, chunk = limits.MAX_ENTITIES_PER_BATCH, {}
        for kind, values in items.items():
            take = min(len(values), per_kind[kind], room)
            chunk[kind], items[kind] = values[:take], values[take:]
            room -= take
        client.log_batch(run_id, **chunk)


def create_stage_run(client: Any, experiment_id: str, stage: str, run_name: str,
                     tags: dict[str, str] | None = None) -> Any:
    """A new RUNNING run of ``stage`` (nested under ``MLFLOW_RUN_ID`` when set); the caller ends it
    (``mlflow.start_run(run_id=...)`` as a context, or ``stage_run`` below)."""
    outer_experiment, outer = parent_run(client)
    all_tags = {"stage": stage, **provenance.run_tags(), **(tags or {})}
    if outer:
        all_tags[PARENT_TAG] = outer
        # The outer run is now this run's parent. Left in the environment, MLflow's fluent API would
        # resolve every later `start_run(nested=True)` of this process to the outer run itself (its
        # params then clash across tiers); a stage is one process, so it is dropped here.
        _taken["outer"] = os.environ.pop("MLFLOW_RUN_ID", None) or outer  # later stage runs still nest
    return client.create_run(outer_experiment or str(experiment_id), run_name=run_name, tags=all_tags)


@contextlib.contextmanager
def stage_run(client: Any, experiment_id: str, stage: str, run_name: str,
              tags: dict[str, str] | None = None) -> Iterator[str]:
    """A RUNNING run of ``stage`` (nested under ``MLFLOW_RUN_ID`` when set); yields its id, then ends it."""
    from mlflow.entities import RunStatus

    run = create_stage_run(client, experiment_id, stage, run_name, tags)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield run.info.run_id
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        client.set_terminated(run.info.run_id, status=status)
