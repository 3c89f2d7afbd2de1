"""Train several prepared trials at once (``hpo.batch_trials`` > 1).

The worker asks Optuna for up to ``batch_trials`` trials, drawing each one's config before the
next ``ask`` (:meth:`TrialRunner.prepare`), so TPE's constant liar and the coverage steering see
the earlier ones as RUNNING with their params. Here the prepared trials are grouped by
:func:`training.batched.group_key`; a group of two or more trains as one
:func:`training.batched.train_batch`, a singleton (or a model the batched trainer cannot take:
``attn_dropout`` > 0) trains alone (``TrialRunner.run_prepared``, i.e. ``training.trainer.train``), exactly as with
``batch_trials: 1``. Each member keeps its own ``on_epoch`` (per-epoch MLflow points,
``trial.report`` and ``should_prune``: a pruned member is dropped from the stack), and each trial
is concluded and told separately. A member trained in a batch gives the metrics of the same
config trained alone (within 1e-6 AUC; tests/test_hpo_batch.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from training.batched import group_key, train_batch
from training.search.objective import Prepared, TrialOutcome, TrialRunner


def groups(prepared: list[Prepared]) -> list[list[Prepared]]:
    """Trials that may share one ``train_batch``, in the order of their first member."""
    out: dict[object, list[Prepared]] = {}
    for i, p in enumerate(prepared):
        key = group_key(p.model_cfg, p.train_cfg) if p.model_cfg.attn_dropout == 0 else ("alone", i)
        out.setdefault(key, []).append(p)
    return list(out.values())


def run_group(runner: TrialRunner, group: list[Prepared], echo: Callable[[str], None] | None = None
              ) -> list[TrialOutcome]:
    """Train one group and conclude each member; on an interrupt every unconcluded member is
    told FAIL and re-queued (as a lone trial is) before the interrupt goes on."""
    if len(group) == 1:  # the path of batch_trials: 1
        return [runner.run_prepared(group[0], echo)]
    outcomes: list[TrialOutcome] = []
    done: set[int] = set()
    for p in group:
        p.info["batched"] = len(group)  # in the trial's info attr: how often groups form
    try:
        started = time.perf_counter()
        try:
            results = train_batch([p.model_cfg for p in group], [p.train_cfg for p in group], runner.data,
                                  on_epoch=[p.on_epoch for p in group])
        except Exception as exc:  # the whole batch failed: every member is a failed trial
            for p in group:
                outcomes.append(runner.conclude(p, None, exc, echo))
                done.add(p.trial.number)
            return outcomes
        runner.train_seconds += time.perf_counter() - started - sum(p.callback_seconds[0] for p in group)
        for p, result in zip(group, results, strict=True):
            exc = result.extra.pop("exception", None)  # the member's on_epoch raised (pruned, or an error)
            outcomes.append(runner.conclude(p, None if exc is not None else result, exc, echo))
            done.add(p.trial.number)
        return outcomes
    except KeyboardInterrupt:
        for p in group:
            if p.trial.number not in done:
                runner.interrupted(p, echo)
        raise


def run_batch(runner: TrialRunner, prepared: list[Prepared], echo: Callable[[str], None] | None = None
              ) -> list[TrialOutcome]:
    """Train and conclude ``prepared`` group by group; an interrupt concludes the groups not yet run too."""
    outcomes: list[TrialOutcome] = []
    todo = groups(prepared)
    for i, group in enumerate(todo):
        try:
            outcomes.extend(run_group(runner, group, echo))
        except KeyboardInterrupt:
            for rest in todo[i + 1:]:
                for p in rest:
                    runner.interrupted(p, echo)
            raise
    return outcomes
