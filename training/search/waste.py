"""Every finished trial is useful or wasted, with one reason.

* ``degenerate``: trained, but its predictions collapsed or have no log-loss skill over the base
  rate (``evaluation.metrics.degeneracy``); unusable for promotion whatever its AUC.
* ``duplicate``: its configuration equals a finished trial's; it was not trained again.
* ``failed``: an exception, a NaN/Inf loss, an interruption, or a worker that died (heartbeat).
* ``late_pruned``: pruned after more than ``late_prune_fraction`` of ``max_epochs``: the compute
  was mostly spent before the pruner gave up on it. Early pruning is the pruner doing its job.
  The engine asks the pruner only in the first ``hpo.pruner.until_fraction`` of the epochs, so
  with the default (0.5 = ``late_prune_fraction``) late pruning cannot happen; it counts only
  when a user lets the pruner act later.
* ``infeasible``: an architecture the budget solver rejects reached the objective. The engine
  excludes these in the sampler, so this only occurs for baselines without that step (plain TPE,
  random search in the benchmark) or hand-enqueued configs.

The wasted fraction is ``wasted / finished`` over finished trials (COMPLETE, PRUNED, FAIL).
"Void" trials are not counted at all: trials a worker claimed but gave back without running
anything (a race for the last slot of the trial target, see ``study.run_worker``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

DEGENERATE, DUPLICATE, FAILED, LATE_PRUNED, INFEASIBLE = (
    "degenerate", "duplicate", "failed", "late_pruned", "infeasible")
REASONS = (DEGENERATE, DUPLICATE, FAILED, LATE_PRUNED, INFEASIBLE)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DIED = "worker process died (no heartbeat)"


def is_void(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("void"))


def counted(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials that count in the statistics (void ones left out)."""
    return [t for t in trials if t.state in FINISHED and not is_void(t)]


def reason(trial: FrozenTrial) -> str | None:
    """The wasted reason of a finished trial, ``None`` if it was useful."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get("wasted") is None:
        return FAILED  # killed before it could record anything (heartbeat-failed)
    return trial.user_attrs.get("wasted")


def fail_reason(trial: FrozenTrial) -> str | None:
    if trial.state != TrialState.FAIL:
        return None
    return trial.user_attrs.get("fail_reason") or DIED


def summarize(trials: Iterable[FrozenTrial]) -> dict[str, Any]:
    """Counts and fractions of wasted trials, overall and by reason."""
    finished = counted(trials)
    by_reason = Counter(r for r in map(reason, finished) if r is not None)
    n = len(finished)
    return {
        "n_finished": n,
        "n_wasted": sum(by_reason.values()),
        "wasted_fraction": sum(by_reason.values()) / n if n else 0.0,
        "count": {r: by_reason.get(r, 0) for r in REASONS},
        "fraction": {r: by_reason.get(r, 0) / n if n else 0.0 for r in REASONS},
    }
