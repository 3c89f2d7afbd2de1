"""Concurrent first runs on a fresh store: how many succeed, and how long they take.

Each round starts N processes at once (a start barrier: they wait for a go file) on a fresh
store folder. Each does what the first seconds of ``tierhpo hpo`` do to the stores: open the
Optuna SQLite storage and create/load a study, open the MLflow SQLite store, create/find the
tier's experiment and log one run. Two variants side by side:

* ``project``: through the project's opening code (``training.search.storage.make_storage``,
  ``training.search.tracking.StudyTracking``, i.e. ``common.store_init`` and its init lock);
* ``bare``: ``optuna.storages.RDBStorage`` and ``MlflowClient`` directly, as before the lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "store_init"
TITLE = "Concurrent first runs on a fresh store"
REPO = Path(__file__).resolve().parents[1]

FIRST_RUN = r"""
import os, sys, time
from pathlib import Path
store, go, variant = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from common.errors import TierHpoError
from training.search.config import StorageConfig
from training.search.storage import make_storage
from training.search.tracking import StudyTracking
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.002)
try:
    opt, ml = f"sqlite:///{store / 'optuna.db'}", f"sqlite:///{store / 'mlflow.db'}"
    if variant == "bare":
        from mlflow.tracking import MlflowClient
        storage = optuna.storages.RDBStorage(opt)
        client = MlflowClient(ml)
        name = "tierhpo-a50"
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
    else:
        storage = make_storage(opt, StorageConfig())
        tracking = StudyTracking("first-run", "a50", tracking_uri=ml)
        client, exp_id = tracking.client, tracking.ensure_experiment()
    study = optuna.create_study(study_name="first-run", storage=storage, direction="maximize", load_if_exists=True)
    trial = study.ask()
    study.tell(trial, 1.0)
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "m", 1.0)
    client.set_terminated(run.info.run_id)
except TierHpoError as exc:
    print(f"tierhpo: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def env(store: Path) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(REPO), "TIERHPO_STORE_DIR": str(store),
           "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "TIERHPO_OPTUNA_STORAGE": f"sqlite:///{store / 'optuna.db'}"}
    out.pop("MLFLOW_RUN_ID", None)
    return out


def concurrent_first_runs(store: Path, n: int, variant: str = "project",
                          timeout_s: float = 300) -> tuple[list[subprocess.CompletedProcess], float]:
    """Start ``n`` first runs on ``store`` at once; return their results and the wall time from the go signal."""
    store.mkdir(parents=True, exist_ok=True)
    go = store.parent / f".go-{store.name}"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_RUN, str(store), str(go), variant], env=env(store),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    time.sleep(min(2.0 + 0.5 * n, 8.0))  # let every interpreter finish its imports
    start = time.perf_counter()
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results, time.perf_counter() - start


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1][:140] if lines else f"exit {result.returncode}"


def run(quick: bool = False) -> str:
    from benchmarks._common import machine

    n, rounds = 8, (1 if quick else 3)
    rows, errors = [], {}
    for variant in ("bare", "project"):
        ok, walls = 0, []
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                results, wall = concurrent_first_runs(Path(tmp) / f"stores{r}", n, variant)
            ok += sum(res.returncode == 0 for res in results)
            walls.append(wall)
            for res in results:
                if res.returncode:
                    errors.setdefault(variant, _error_line(res))
        rows.append(f"| {variant} | {ok}/{n * rounds} | {min(walls):.2f} | {max(walls):.2f} |")
    body = [
        f"{n} processes started together ({rounds} round(s), each on a fresh store folder), each opening the "
        "Optuna and MLflow SQLite stores, creating/loading a study and an experiment and logging one run. "
        "`project`: the project's opening code (`common.store_init`: init lock beside the store, checks); "
        "`bare`: `RDBStorage` + `MlflowClient` directly. Wall time from the go signal to the last exit "
        "(the children import before it; on a loaded machine some imports run past it, so the wall "
        "time measures CPU contention as much as the lock).",
        "",
        "| variant | succeeded | wall s (min) | wall s (max) |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    for variant, line in errors.items():
        body.append(f"First failure of `{variant}`: `{line}`")
        body.append("")
    body.append(f"Machine: {machine()} (shared with other jobs while it ran).")
    return "\n".join(body)
