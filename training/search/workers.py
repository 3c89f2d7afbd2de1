"""Scale-out: N worker processes on this machine filling one Optuna study; more machines join it.

There is no scheduler here. The coordination is Optuna's RDB storage (PostgreSQL for several
machines) plus the engine's worker loop (``training.search.study.run_worker``): each worker,
under a per-study lock (``storage.study_lock``: a PostgreSQL advisory lock, or ``flock``
beside a SQLite file), fails dead trials, checks the trial target and asks for a trial, so

* the trial target is exact across all workers (COMPLETE + RUNNING never exceeds ``n_trials``),
* forced extremes are enqueued once and each is popped by exactly one worker,
* the coverage tracker reads the finished trials from the storage, never one worker's memory,
* a worker killed mid-trial is detected (dead pid on this host at once, heartbeat elsewhere), its
  trial is failed and re-queued, and its MLflow run closed, by whichever worker looks next.

This module adds what a process pool needs around that loop:

* ``plan_workers(n)``: torch threads per worker (``cores // n``) and, when there are enough cores,
  a disjoint CPU set per worker, so two workers do not fight over the same cores.
* ``run_workers(...)``: validates the storage, opens (or joins) the study once in the parent
  (errors stay one line, before any process starts), spawns the workers, forwards Ctrl-C/SIGTERM
  (each worker then ends its trial as KILLED and re-queues it), and summarises the study.
* Lost database connection: a worker waits for the storage with exponential backoff and resumes
  (the engine's loop is idempotent: it re-reads the study), or exits with one clear line after
  ``reconnect.Backoff.tries`` attempts. Its unfinished trial stays RUNNING until the heartbeat grace period fails
  and re-queues it: the study is never left inconsistent.
* ``join=True`` (``tierhpo hpo --join``, for extra machines): the study must already exist; a
  different search space or settings is an error naming what differs, and nothing is created.

Processes come from a ``forkserver`` that has imported the engine once (torch, Optuna, MLflow:
seconds per process otherwise) but holds no database connection, MLflow client or torch thread
pool; each worker pins its CPUs and threads before torch runs anything, then unpickles its work.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from common.errors import TierHpoError
from common.redact import redact
from common.threads import available_cpus, pin_threads
from training.search import storage as sc
from training.search.reconnect import Backoff, LockTimer, is_connection_loss, storage_down, wait_for_storage

if TYPE_CHECKING:
    from training.dataset import TierData
    from training.search.spec import StudySpec
    from training.search.worker import WorkerReport, WorkerSettings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED = 0, 2, 1, 130
STOP_TIMEOUT_S = 120.0  # a worker ending its trial on SIGTERM (closing the MLflow run, re-queueing)
EXIT_TIMEOUT_S = 60.0  # a worker that has sent its report (or closed its pipe) exiting


# ---------------------------------------------------------------------- resources


@dataclass(frozen=True)
class WorkerPlan:
    index: int  # global worker index (unique across machines with index_offset; sampling is seeded per trial)
    threads: int  # torch intra-op threads
    cpus: tuple[int, ...] | None  # CPU affinity, or None to leave it to the OS


def plan_workers(n_workers: int, cpus: list[int] | None = None, *, pin: bool = True,
                 index_offset: int = 0, threads: int | None = None) -> list[WorkerPlan]:
    """Split the CPUs between ``n_workers``: ``len(cpus) // n`` threads each (at least 1; ``threads``
    overrides), and a disjoint CPU set each when every worker gets at least one core and ``pin``."""
    if n_workers < 1:
        raise TierHpoError(f"--workers must be >= 1, got {n_workers}")
    if threads is not None and threads < 1:
        raise TierHpoError(f"threads per worker must be >= 1, got {threads}")
    cpus = cpus if cpus is not None else available_cpus()
    per = max(1, len(cpus) // n_workers)
    plans = []
    for i in range(n_workers):
        own = tuple(cpus[i * per:(i + 1) * per]) if pin and n_workers <= len(cpus) else None
        plans.append(WorkerPlan(index_offset + i, threads or per, own))
    return plans


def pin_process(plan: WorkerPlan) -> None:
    """Apply ``plan`` to this process (call before torch runs anything)."""
    pin_threads(plan.threads, plan.cpus)


def run_worker_resilient(spec: StudySpec, data: TierData, n_trials: int, url: str, *,
                         settings: WorkerSettings, worker_index: int, backoff: Backoff,
                         echo: Callable[[str], None], lock: LockTimer | None = None) -> list[WorkerReport]:
    """``run_worker`` against ``url`` (locked per study), resumed after connection losses.

    Every loss starts a fresh series of ``backoff.tries`` probes, so a long study survives
    several short outages; one outage longer than the whole series ends the worker.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    from training.search.study import run_worker

    lock = lock or LockTimer(lambda: sc.study_lock(url, spec.study_name))
    reports: list[WorkerReport] = []
    while True:
        try:
            reports.append(run_worker(spec, data, n_trials, url, settings=settings, worker_index=worker_index,
                                      lock=lock, echo=echo))
            return reports
        except UpdateFinishedTrialError as exc:
            # Our heartbeat came too late (an overloaded host, a stalled connection): another worker
            # failed and re-queued the trial while we ran it. The storage is consistent (the trial
            # stays FAIL, its retry is queued, the engine closed our MLflow run); carry on.
            echo(f"{exc} (another worker declared it dead: heartbeat later than the grace period); continuing")
            continue
        except sc.StorageUnavailable as exc:
            why = str(exc)
        except TierHpoError as exc:
            # the engine reports a storage it cannot open as TierHpoError: retry only if it is down
            if not storage_down(url):
                raise
            why = str(exc)
        except Exception as exc:
            if not is_connection_loss(exc):
                raise
            text = str(getattr(exc, "orig", None) or exc).strip()
            why = redact(text.splitlines()[0] if text else type(exc).__name__)
        wait_for_storage(url, backoff, echo, why)


# ---------------------------------------------------------------------- the worker process


def _worker_main(plan: WorkerPlan, env: dict[str, str], payload: bytes, conn: Connection) -> None:
    """Entry point of one worker process: take the caller's environment, pin threads, then
    unpickle the work and run it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into one SIGTERM per worker
    # The forkserver kept the environment of the moment it started; the caller's may have changed
    # since (MLFLOW_TRACKING_URI, PGPASSWORD, TIERHPO_* in a notebook or a test session).
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" line per run
    pin_process(plan)
    prefix = f"[worker {plan.index}]"
    logging.basicConfig(level=logging.WARNING, format=f"{prefix} %(levelname)s %(name)s: %(message)s")

    def echo(line: str) -> None:
        print(f"{prefix} {line}", file=sys.stderr, flush=True)  # progress goes to stderr, as in the CLI

    code, message, reports, lock = EXIT_BUG, "", [], None
    try:
        work = pickle.loads(payload)
        data = work["data"]() if callable(work["data"]) else work["data"]
        echo(f"pid {os.getpid()}, {plan.threads} torch thread(s)"
             + (f", cpus {list(plan.cpus)}" if plan.cpus is not None else ""))
        url, name = work["url"], work["spec"].study_name
        lock = LockTimer(lambda: sc.study_lock(url, name))
        reports = run_worker_resilient(work["spec"], data, work["n_trials"], url, settings=work["settings"],
                                       worker_index=plan.index, backoff=work["backoff"], echo=echo, lock=lock)
        code = EXIT_OK
    except TierHpoError as exc:
        code, message = EXIT_ERROR, redact(str(exc))
        echo(f"error: {message}")
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, "interrupted"
    except BaseException as exc:  # a bug: keep the traceback on stderr, one line for the parent
        import traceback

        traceback.print_exc()
        code, message = EXIT_BUG, redact(f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    finally:
        with contextlib.suppress(Exception):
            conn.send((code, message, reports, lock.seconds if lock else 0.0))
        conn.close()
    sys.exit(code)


# ---------------------------------------------------------------------- the parent


@dataclass
class WorkerExit:
    index: int
    pid: int | None
    exitcode: int | None  # negative: killed by that signal
    message: str = ""
    reports: list[Any] = field(default_factory=list)  # the engine's WorkerReport per (re)connection
    lock_s: float = 0.0  # taking and giving back the study lock

    @property
    def trials(self) -> int:
        return sum(len(r.outcomes) for r in self.reports)


@dataclass
class WorkersReport:
    """What ``run_workers`` did: per-worker exits (trials run, errors) and wall time."""

    plans: list[WorkerPlan]
    exits: list[WorkerExit]
    wall_s: float

    @property
    def failed(self) -> list[WorkerExit]:
        return [e for e in self.exits if e.exitcode != EXIT_OK]


def _stop(procs: list[mp.process.BaseProcess], timeout_s: float) -> None:
    """SIGTERM each live worker once (it ends its trial as KILLED and re-queues it), then SIGKILL."""
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(OSError):
                p.terminate()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


_PRELOAD = ["training.search.study", "training.search.worker", "training.search.results", "training.search.workers"]


def _context() -> mp.context.BaseContext:
    """``forkserver`` preloaded with the engine (one import for all workers and all calls in
    this process); ``spawn`` where there is no forkserver."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def warm_up() -> None:
    """Start the preloaded forkserver now, so that its imports (torch, Optuna, MLflow) run while
    the caller loads the tier and opens the stores; ``spawn_workers`` then forks from it at once.
    Harmless when no worker follows (the server exits with this process)."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def spawn_workers(spec: StudySpec, data: TierData | Callable[[], TierData], n_trials: int, url: str,
                  plans: list[WorkerPlan], settings: WorkerSettings, backoff: Backoff,
                  echo: Callable[[str], None], stop_timeout_s: float = STOP_TIMEOUT_S) -> list[WorkerExit]:
    """Start one process per plan, wait for all, collect their exits."""
    ctx = _context()
    payload = pickle.dumps({"spec": spec, "data": data, "n_trials": n_trials, "url": url,
                            "settings": settings, "backoff": backoff})
    procs: list[Any] = []
    exits: dict[int, WorkerExit] = {}
    pending: dict[Connection, tuple[WorkerPlan, Any]] = {}
    from training.search.liveness import sigterm_as_interrupt  # lazy like the other engine imports

    try:
        with sigterm_as_interrupt():
            for plan in plans:
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker_main, args=(plan, dict(os.environ), payload, writer),
                                   name=f"tierhpo-worker-{plan.index}")
                proc.start()
                writer.close()  # the child holds the only write end: EOF here when it dies
                procs.append(proc)
                pending[reader] = (plan, proc)
                exits[plan.index] = WorkerExit(plan.index, proc.pid, None)
            while pending:
                for reader in wait(list(pending)):
                    plan, proc = pending.pop(reader)
                    with contextlib.suppress(EOFError, OSError):  # EOF: died without reporting (SIGKILL)
                        code, message, reports, lock_s = reader.recv()
                        exits[plan.index] = WorkerExit(plan.index, proc.pid, code, message, reports, lock_s)
                    reader.close()
                    e = exits[plan.index]
                    if _join_or_kill(proc, EXIT_TIMEOUT_S) and e.exitcode is not None:
                        echo(f"worker {plan.index} hung after reporting (exit {e.exitcode}); killed it")
                    else:  # the process's own status wins over what it sent
                        e.exitcode = proc.exitcode
                    if e.exitcode != EXIT_OK and not e.message:
                        e.message = f"exited with {_describe_exit(proc.exitcode)}"
    except KeyboardInterrupt:
        echo(f"interrupted: stopping {sum(p.is_alive() for p in procs)} worker(s); their trials are re-queued")
        _stop(procs, stop_timeout_s)
        raise
    return [exits[i] for i in sorted(exits)]


def _join_or_kill(proc: Any, timeout_s: float) -> bool:
    """Wait for a worker that has closed its pipe; SIGKILL it if it is still alive after
    ``timeout_s`` (stuck in interpreter shutdown). True if it had to be killed."""
    proc.join(timeout_s)
    if not proc.is_alive():
        return False
    proc.kill()
    proc.join(5)
    return True


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def run_workers(spec: StudySpec, data: TierData | Callable[[], TierData], n_trials: int,
                storage_url: str, *, n_workers: int, settings: WorkerSettings | None = None,
                join: bool = False, index_offset: int = 0, pin_cpus: bool = True,
                threads_per_worker: int | None = None,
                backoff: Backoff | None = None, echo: Callable[[str], None] | None = None,
                plots: bool = True, stop_timeout_s: float = STOP_TIMEOUT_S) -> Any:
    """Fill ``spec``'s study to ``n_trials`` COMPLETE trials with ``n_workers`` local processes.

    ``data``: the tier data, or a picklable zero-argument callable that loads it in each worker
    (e.g. ``functools.partial(training.dataset.load_tier, ...)``). ``storage_url``: the shared
    Optuna storage (``postgresql://USER@HOST/DB`` for several machines; the password comes
    from ``~/.pgpass`` or ``PGPASSWORD``). ``join``: the study must already exist (see
    :func:`check_joinable`). ``index_offset``: added to the worker indices (give each machine
    its own range so TPE seeds differ). Returns the engine's ``StudyResult`` with
    ``.report`` = :class:`WorkersReport`; raises ``TierHpoError`` when the study did not reach
    ``n_trials`` (naming each failed worker), ``KeyboardInterrupt`` on Ctrl-C/SIGTERM.
    """
    from training.search.results import finalize_study
    from training.search.study import WorkerSettings, open_study, reconcile_runs

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    settings = settings or WorkerSettings()
    backoff = backoff or Backoff()
    if n_trials < 1:
        raise TierHpoError(f"--trials must be >= 1, got {n_trials}")
    url = sc.check_storage_reachable(storage_url)
    if join:
        from training.search.study import check_joinable  # lazy like the other engine imports

        check_joinable(spec, url)
    plans = plan_workers(n_workers, pin=pin_cpus, index_offset=index_offset, threads=threads_per_worker)
    sc.ensure_schema(url)
    lock = lambda: sc.study_lock(url, spec.study_name)  # noqa: E731
    # Open once here: identity checks, forced points, the MLflow parent run; errors stay one line.
    handle = open_study(spec, url, settings, worker_index=index_offset, lock=lock)
    echo(f"study {spec.study_name} on {redact(url)}: {n_workers} worker(s) x "
         f"{plans[0].threads} thread(s), target {n_trials} complete trials")
    started = time.perf_counter()
    try:
        exits = spawn_workers(spec, data, n_trials, url, plans, settings, backoff, echo, stop_timeout_s)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            handle.tracking.set_parent_status("KILLED")
        raise
    report = WorkersReport(plans, exits, time.perf_counter() - started)
    for e in report.failed:
        echo(f"worker {e.index} (pid {e.pid}) {e.message or _describe_exit(e.exitcode)}")
    reasons = "; ".join(f"worker {e.index}: {e.message}" for e in report.failed) or "no worker error"
    try:
        complete = len(handle.study.get_trials(deepcopy=False, states=(_complete_state(),)))
    except Exception as exc:
        if not is_connection_loss(exc):
            raise
        raise TierHpoError(f"study {spec.study_name}: its storage {redact(url)} is unreachable after the "
                           f"workers stopped ({reasons}); run the same command again when it is back") from None
    if complete < n_trials:
        with contextlib.suppress(Exception):
            handle.tracking.set_parent_status("FAILED")
        raise TierHpoError(f"study {spec.study_name} has {complete}/{n_trials} complete trials after its workers "
                           f"stopped ({reasons}); fix that and run the same command again to resume")
    reconcile_runs(handle)  # a worker SIGKILLed between tell and closing its run left it RUNNING
    result = finalize_study(handle, n_trials, plots=plots)
    result.report = report
    return result


def _complete_state() -> Any:
    from optuna.trial import TrialState

    return TrialState.COMPLETE


def describe(report: WorkersReport) -> list[str]:
    """Human-readable lines for the CLI: per worker, trials run and exit."""
    lines = []
    for plan, e in zip(report.plans, report.exits, strict=True):
        cpus = f" cpus {list(plan.cpus)}" if plan.cpus is not None else ""
        status = "ok" if e.exitcode == EXIT_OK else (e.message or _describe_exit(e.exitcode))
        lines.append(f"worker {e.index}: {e.trials} trial(s), {plan.threads} thread(s){cpus}, {status}")
    return lines


__all__ = ["Backoff", "WorkerPlan", "WorkersReport", "describe", "is_connection_loss",
           "plan_workers", "run_workers", "run_worker_resilient", "wait_for_storage"]
