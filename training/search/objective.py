"""One trial, start to finish: draw the config, refuse duplicates and infeasible structures, train
with pruning, classify the outcome, record it in Optuna and MLflow, tell the study.

The order at the end is deliberate: user attributes, then (for a new best) the checkpoint, then
``study.tell``, then the MLflow run's final status. A process killed between ``tell`` and the
MLflow call leaves a RUNNING run for a finished trial, which the next start closes
(``study.reconcile_runs``); the reverse order could leave a
FINISHED run for a trial that the heartbeat then fails and retries.

Objective value: ``val/auc`` at the trainer's best epoch, except

* degenerate models score 0.5, the no-skill AUC: their AUC can survive a collapse of the
  predictions, and feeding it to TPE would draw the search towards collapse (the real
  ``val/auc`` stays in the ``metrics`` user attribute and in MLflow);
* a duplicate (identical to a finished trial; the sampler prevents these, this is the safety
  net) is not trained: it takes the original's value and state (Optuna's documented pattern for
  skipping duplicates), is tagged ``wasted=duplicate`` and ``duplicate_of``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.metrics import degeneracy
from training.budget import count_params
from training.dataset import TierData
from training.model import ModelConfig
from training.search import waste
from training.search.tracking import StudyTracking, Timer, TrialRun, best_metrics, coverage_params
from training.trainer import EpochReport, TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

NO_SKILL_AUC = 0.5
STRUCTURAL = ("n_layers", "n_heads", "d_ff_ratio", "patch_len", "stride")  # change the parameter count
ARCH_PARAMS = (*STRUCTURAL, "dropout")  # training.budget.ModelParams.architecture() overrides


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks since boot), ``None`` if it is gone (or a zombie).
    With the pid it identifies a process even where pids are reused (containers restart at low pids)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def worker_info() -> dict[str, Any]:
    """Who runs a trial: lets a restarted process on the same host see that the owner is gone."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()), "boot": boot}


def owner_gone(owner: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether the worker that claimed a trial is certainly dead, judged from this host.
    Another host's worker cannot be checked from here: only its heartbeat tells."""
    if not owner or owner.get("host") != me["host"] or not me["boot"]:
        return False
    if owner.get("boot") != me["boot"]:
        return True  # this host rebooted since (power loss): every trial it ran is dead
    if owner.get("pid") == me["pid"] and owner.get("start") == me["start"]:
        return False  # this very process
    return process_start(int(owner.get("pid") or 0)) != owner.get("start")


@dataclass
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    phase: str
    wasted: str | None
    epochs: int
    seconds: float
    message: str


@dataclass
class Prepared:
    """A trial whose config is drawn and whose MLflow run is open, waiting to be trained."""

    trial: optuna.Trial
    started: float
    tracking_before: float
    params: dict[str, Any] = field(default_factory=dict)
    phase: str = "?"
    info: dict[str, Any] = field(default_factory=dict)
    known: list[FrozenTrial] = field(default_factory=list)  # the study's trials as read at its start
    mlrun: TrialRun | None = None
    model_cfg: ModelConfig | None = None
    train_cfg: TrainConfig | None = None
    on_epoch: Callable[[EpochReport], None] | None = None
    epochs: list[int] = field(default_factory=lambda: [0])
    last: dict[str, Any] = field(default_factory=dict)
    callback_seconds: list[float] = field(default_factory=lambda: [0.0])

    def close_run(self, status: str) -> None:
        if self.mlrun is not None and not self.mlrun.ended:  # only reached if _finish itself failed
            self.mlrun.end(status, tags={"state": "FAIL"})


class TrialRunner:
    """Runs trials of one study in this process (one instance per worker)."""

    def __init__(self, engine: Any, study: optuna.Study, data: TierData, tracking: StudyTracking,
                 sampler: Any, *, log_every_s: float = 15.0, progress: bool = False,
                 checkpoints: bool = True, base_tags: dict[str, str] | None = None) -> None:
        self.engine, self.spec = engine, engine.spec
        self.study, self.data, self.tracking, self.sampler = study, data, tracking, sampler
        self.log_every_s, self.progress, self.checkpoints = log_every_s, progress, checkpoints
        self.base_tags = base_tags or {}
        self.storage_timer, self.sampling_timer = Timer(), Timer()
        self.train_seconds = 0.0
        self.pruning = not isinstance(study.pruner, optuna.pruners.NopPruner)

    # ------------------------------------------------------------------ helpers

    def _phase(self, trial: optuna.Trial) -> str:
        decision = self.sampler.decision(trial.number) if hasattr(self.sampler, "decision") else None
        stored = trial.user_attrs.get("phase")
        if stored:  # enqueued (forced) or a retry, which inherits its original's phase
            return stored
        if decision is not None:
            return decision.phase
        return "random" if isinstance(self.sampler, optuna.samplers.RandomSampler) else "tpe"

    def _split(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        arch = {k: v for k, v in params.items() if k in ARCH_PARAMS}
        train_over = {k: v for k, v in params.items() if k not in ARCH_PARAMS}
        return arch, train_over

    def model_config(self, params: dict[str, Any]) -> ModelConfig | None:
        arch, _ = self._split(params)
        return self.spec.model.solve(self.spec.budget, self.spec.n_features, self.spec.context_len, **arch)

    def train_config(self, params: dict[str, Any]) -> TrainConfig:
        _, over = self._split(params)
        raw = {**self.spec.train.to_dict(), **over, "seed": self.spec.seed, "progress": self.progress}
        return TrainConfig.from_dict(raw)

    def _duplicate_of(self, params: dict[str, Any], trials: list[FrozenTrial], number: int) -> FrozenTrial | None:
        key = self.engine.space.key(params)
        for t in trials:
            if (t.number != number and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                    and not waste.is_void(t) and self.engine.space.key(t.params) == key):
                return t
        return None

    def _is_new_best(self, value: float, number: int, known: list[FrozenTrial]) -> bool:
        """Better than every useful trial finished when this one started. With parallel workers a
        trial finished meanwhile may be missed, which can only cause an extra upload, never a missing one."""
        others = [t.value for t in known if t.number != number and t.state == TrialState.COMPLETE
                  and waste.reason(t) is None and t.value is not None]
        return not others or value > max(others)

    def _coverage(self, trials: list[FrozenTrial], params: dict[str, Any], explored: bool) -> Any:
        points = [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        return self.engine.tracker.coverage(points + ([params] if explored else []))

    # ------------------------------------------------------------------ the trial

    def run(self, trial: optuna.Trial, echo: Callable[[str], None] | None = None) -> TrialOutcome:
        prepared = self.prepare(trial, echo)
        return prepared if isinstance(prepared, TrialOutcome) else self.run_prepared(prepared, echo)

    def run_prepared(self, prepared: Prepared, echo: Callable[[str], None] | None = None) -> TrialOutcome:
        """Train one prepared trial alone and conclude it."""
        try:
            result = train(prepared.model_cfg, prepared.train_cfg, self.data, on_epoch=prepared.on_epoch)
            self.train_seconds += result.train_seconds - prepared.callback_seconds[0]
        except KeyboardInterrupt:
            self.interrupted(prepared, echo)
            raise
        except Exception as exc:  # optuna.TrialPruned included: conclude tells them apart
            return self.conclude(prepared, None, exc, echo)
        return self.conclude(prepared, result, None, echo)

    def prepare(self, trial: optuna.Trial, echo: Callable[[str], None] | None = None) -> TrialOutcome | Prepared:
        """Draw the trial's config and start its run: a finished outcome (duplicate, infeasible,
        failed) or a :class:`Prepared` trial to train. Drawing at once matters for batches: the
        next ``ask`` (constant liar, coverage of running trials) sees these params."""
        p = Prepared(trial, time.perf_counter(), self.tracking.timer.seconds)
        n = trial.number
        try:
            with self.storage_timer():
                if "worker" not in trial.user_attrs:  # run_worker sets it right after ask
                    trial.set_user_attr("worker", worker_info())
                trials = p.known = self.study.get_trials(deepcopy=False)
            me = next(t for t in trials if t.number == n)
            p.info["retry_of"] = me.system_attrs.get("failed_trial")
            with self.sampling_timer():
                p.params = {q.name: q.suggest(trial) for q in self.engine.space.params}
            p.phase = self._phase(trial)  # written with the final attrs (one write fewer per trial)

            dup = self._duplicate_of(p.params, trials, n)
            if dup is not None:
                p.info["duplicate_of"] = dup.number
                p.mlrun = self._start_run(trial, p.params, p.phase, None)
                return self._finish(p, dup.state, dup.value if dup.state == TrialState.COMPLETE else None,
                                    waste.DUPLICATE, None, dict(dup.user_attrs.get("metrics") or {}), 0, echo)

            p.model_cfg = self.model_config(p.params)
            if p.model_cfg is None or not self.engine.feasibility.is_feasible(p.params):
                p.mlrun = self._start_run(trial, p.params, p.phase, None)
                return self._finish(p, TrialState.FAIL, None, waste.INFEASIBLE,
                                    f"no width fits budget {self.spec.budget} for this structure", {}, 0, echo)

            p.train_cfg = self.train_config(p.params)
            n_params = count_params(p.model_cfg)
            p.info.update(model_config=p.model_cfg.to_dict(), train_config=p.train_cfg.to_dict(), n_params=n_params)
            p.mlrun = self._start_run(trial, p.params, p.phase, (p.model_cfg, p.train_cfg, n_params))
            p.on_epoch = self._on_epoch(p)
            return p
        except KeyboardInterrupt:
            self.interrupted(p, echo)
            raise
        except Exception as exc:  # recorded, not fatal: the study goes on
            log.warning("trial %d raised %s", n, exc, exc_info=True)
            return self._failed(p, exc, echo)

    def _on_epoch(self, p: Prepared) -> Callable[[EpochReport], None]:
        trial, train_cfg, mlrun = p.trial, p.train_cfg, p.mlrun

        def on_epoch(report: EpochReport) -> None:
            t0 = time.perf_counter()
            p.epochs[0] = report.epoch
            p.last["metrics"] = report.metrics
            step = report.as_dict()
            step.pop("epoch")
            mlrun.log_epoch(report.epoch, step)
            auc = report.metrics.get("val/auc", math.nan)
            prune = False
            if self.pruning and report.epoch <= self.spec.pruner.until_fraction * train_cfg.max_epochs:
                # Storage round trips only where they matter: values the pruner compares, and
                # the question only once it may answer yes (after the median's warm-up).
                with self.storage_timer():
                    if math.isfinite(auc):
                        trial.report(auc, report.epoch)
                    if self.spec.pruner.kind != "median" or report.epoch > self.spec.pruner.n_warmup_steps:
                        prune = trial.should_prune()
            p.callback_seconds[0] += time.perf_counter() - t0
            if prune:
                raise optuna.TrialPruned(f"pruned at epoch {report.epoch} (val/auc {auc:.4f})")

        return on_epoch

    def conclude(self, p: Prepared, result: TrainResult | None, exc: BaseException | None,
                 echo: Callable[[str], None] | None = None) -> TrialOutcome:
        """Classify a trained (``result``) or stopped (``exc``: pruned, or an error) trial and tell it."""
        try:
            if isinstance(exc, optuna.TrialPruned):
                p.info["pruned"] = str(exc)
                late = p.epochs[0] > self.spec.late_prune_fraction * p.train_cfg.max_epochs
                return self._finish(p, TrialState.PRUNED, None, waste.LATE_PRUNED if late else None, None,
                                    dict(p.last.get("metrics") or {}), p.epochs[0], echo)
            if exc is not None:
                log.warning("trial %d raised %s", p.trial.number, exc, exc_info=exc)
                return self._failed(p, exc, echo)
            assert result is not None
            p.epochs[0] = result.epochs_run
            p.info.update(best_epoch=result.best_epoch, stop=result.status, stop_reason=result.reason)
            metrics = dict(result.val_metrics)
            if not result.ok:
                return self._finish(p, TrialState.FAIL, None, waste.FAILED, result.reason, metrics, p.epochs[0], echo)
            auc = metrics.get("val/auc", math.nan)
            if not math.isfinite(auc):
                return self._finish(p, TrialState.FAIL, None, waste.FAILED,
                                    "val/auc undefined (one class in the validation split)", metrics, p.epochs[0],
                                    echo)
            why = degeneracy(metrics, "val", self.spec.metrics.pred_std_min, self.spec.metrics.skill_min)
            if why is not None:
                p.info["degenerate"] = why
            value = NO_SKILL_AUC if why else auc
            if (why is None and self.checkpoints and result.state_dict is not None
                    and self._is_new_best(value, p.trial.number, p.known)):
                p.mlrun.log_state_dict(result.state_dict)
                p.info["checkpoint"] = "checkpoint/model.pt"
            return self._finish(p, TrialState.COMPLETE, value, waste.DEGENERATE if why else None, None, metrics,
                                p.epochs[0], echo)
        except KeyboardInterrupt:
            self.interrupted(p, echo)
            raise
        except Exception as err:  # recorded, not fatal: the study goes on
            log.warning("trial %d raised %s", p.trial.number, err, exc_info=True)
            return self._failed(p, err, echo)

    def _failed(self, p: Prepared, exc: BaseException, echo: Callable[[str], None] | None) -> TrialOutcome:
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
        try:
            return self._finish(p, TrialState.FAIL, None, waste.FAILED, reason, {}, p.epochs[0], echo)
        finally:
            p.close_run("FAILED")

    def interrupted(self, p: Prepared, echo: Callable[[str], None] | None = None) -> None:
        """Tell an interrupted trial FAIL, close its run as KILLED and queue its config again."""
        try:
            self._finish(p, TrialState.FAIL, None, waste.FAILED, "interrupted", {}, p.epochs[0], echo,
                         interrupted=True)
            self._requeue(p.trial.number, p.params)
        finally:
            p.close_run("KILLED")

    def _requeue(self, number: int, params: dict[str, Any]) -> None:
        """Queue an interrupted trial's config again, so the next run (or another worker) redoes it first."""
        if set(params) != set(self.engine.space.names):
            return  # interrupted before its config was drawn: nothing to redo
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
        history = [*frozen.system_attrs.get("retry_history", []), number]
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=params,
            distributions=self.engine.space.distributions(),
            user_attrs={k: frozen.user_attrs[k] for k in ("phase", "forced_index") if k in frozen.user_attrs},
            system_attrs={"failed_trial": frozen.system_attrs.get("failed_trial", number), "retry_history": history},
        ))

    def _start_run(self, trial: optuna.Trial, params: dict[str, Any], phase: str,
                   built: tuple[ModelConfig, TrainConfig, int] | None) -> TrialRun:
        """The trial's nested run; its id goes into the trial's user attrs at once, so whoever
        finds the trial dead can close the run."""
        n = trial.number
        logged: dict[str, Any] = dict(params)
        if built is not None:
            model_cfg, train_cfg, n_params = built
            logged.update({f"model.{k}": v for k, v in model_cfg.to_dict().items()})
            logged.update({f"train.{k}": v for k, v in train_cfg.to_dict().items() if k not in params})
            logged["n_params"] = n_params
        tags = {**self.base_tags, "phase": phase, "trial_number": str(n), "state": "RUNNING"}
        mlrun = self.tracking.start_trial(n, logged, tags, self.log_every_s)  # n_params is a param, not a metric
        with self.storage_timer():
            trial.set_user_attr("mlflow_run_id", mlrun.run_id)
        return mlrun

    def _finish(self, p: Prepared, state: TrialState, value: float | None, wasted: str | None,
                fail_reason: str | None, metrics: dict[str, float], epochs: int,
                echo: Callable[[str], None] | None, interrupted: bool = False) -> TrialOutcome:
        trial, mlrun, phase, info, params = p.trial, p.mlrun, p.phase, p.info, p.params
        n = trial.number
        # Coverage after this trial, from the trials known at its start plus itself (the study
        # attr is a record for people and MLflow; the sampler always recomputes from storage).
        coverage = self._coverage([t for t in p.known if t.number != n], params,
                                  explored=state in (TrialState.COMPLETE, TrialState.PRUNED) and bool(params))
        info.update(fail_reason=fail_reason, epochs=epochs, coverage=coverage.metrics(), timing={
            "total_s": time.perf_counter() - p.started,
            "tracking_s": self.tracking.timer.seconds - p.tracking_before,
        })
        with self.storage_timer():  # four trial writes at the end: phase, wasted reason, val metrics, the rest
            if trial.user_attrs.get("phase") != phase:
                trial.set_user_attr("phase", phase)
            trial.set_user_attr("wasted", wasted)
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr("info", info)
            if state == TrialState.COMPLETE:
                self.study.tell(trial, value)
            else:
                self.study.tell(trial, state=state)
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
        if interrupted:
            status = "KILLED"
        if mlrun is not None:
            tags = {"state": state.name, "wasted_reason": wasted or "none"}
            for key in ("duplicate_of", "retry_of", "degenerate", "pruned", "stop"):
                if info.get(key) is not None:
                    tags[key] = str(info[key])
            if fail_reason:
                tags["fail_reason"] = fail_reason
            own = {} if wasted == waste.DUPLICATE else metrics  # a duplicate trained nothing: no val/* of its own
            final = {**best_metrics(own), "epochs": epochs}  # best/val/auc ...; val/auc is the per-epoch curve
            if value is not None:
                final["objective"] = value
            mlrun.end(status, final, tags, {"coverage.json": coverage.to_json()},
                      params=coverage_params(coverage.metrics()))
        seconds = time.perf_counter() - p.started
        auc = metrics.get("val/auc")
        shown = f"val/auc {auc:.4f}" if isinstance(auc, float) and math.isfinite(auc) else state.name.lower()
        message = (f"trial {n:3d} [{phase}] {state.name:8s} {shown}"
                   f"{f' wasted={wasted}' if wasted else ''}{f' ({fail_reason})' if fail_reason else ''}"
                   f" epochs={epochs} {seconds:.1f}s")
        if echo is not None:
            echo(message)
        return TrialOutcome(n, state, value, phase, wasted, epochs, seconds, message)
