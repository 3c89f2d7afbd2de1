"""Every path and store location of the project, defined once.

Stores (MLflow, Optuna) resolve to absolute paths under the *repository root*, so that
``dvc exp run`` temp copies (``<root>/.dvc/tmp/exps/...``) and subprocesses all write to
the same stores as a plain ``dvc repro``.

Environment overrides:
  TIERHPO_ROOT            project root (default: found from this file / the cwd)
  TIERHPO_STORE_DIR       folder of the default stores (default: <root>/stores)
  MLFLOW_TRACKING_URI     MLflow tracking store (default: sqlite:///<store_dir>/mlflow.db)
  TIERHPO_OPTUNA_STORAGE  Optuna storage URL (default: sqlite:///<store_dir>/optuna.db)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_EXP_TEMP = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def _outer_root(path: Path) -> Path:
    """Strip a ``.dvc/tmp/exps/<...>`` temp-copy suffix so experiments share the real root."""
    text = str(path)
    cut = text.find(_EXP_TEMP)
    return Path(text[:cut]) if cut >= 0 else path


def project_root() -> Path:
    """The working copy the pipeline runs in (where params.yaml and dvc.yaml live)."""
    env = os.environ.get("TIERHPO_ROOT")
    if env:
        return Path(env).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if (candidate / "params.yaml").is_file() and (candidate / "dvc.yaml").is_file():
            return candidate
    return Path(__file__).resolve().parents[1]


def store_dir() -> Path:
    env = os.environ.get("TIERHPO_STORE_DIR")
    root = Path(env).resolve() if env else _outer_root(project_root()) / "stores"
    root.mkdir(parents=True, exist_ok=True)
    return root


def mlflow_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir() / 'mlflow.db'}"


@contextlib.contextmanager
def mlflow_fluent_tracking() -> Iterator[str]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``) at this project's store, then put it back.

    ``mlflow.set_tracking_uri`` is process-global and also exports MLFLOW_TRACKING_URI, so a stage run
    in-process (``tierhpo batch``, a notebook, the tests) would otherwise leave every later client on
    this store. MLflow's ``_use_tracking_uri`` restores the caller's setting; it is private, so it is
    used here only, behind this one wrapper.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from common import store_init

    uri = store_init.ensure_mlflow_store(mlflow_tracking_uri())
    with _use_tracking_uri(uri):
        yield uri


def mlflow_artifact_root() -> str:
    """Artifact location for experiments created on the default SQLite store."""
    return (store_dir() / "mlartifacts").as_uri()


def optuna_storage_url() -> str:
    return os.environ.get("TIERHPO_OPTUNA_STORAGE") or f"sqlite:///{store_dir() / 'optuna.db'}"


def params_file() -> Path:
    return project_root() / "params.yaml"


def raw_dir() -> Path:
    return project_root() / "data" / "raw"


def tiers_dir() -> Path:
    return project_root() / "data" / "tiers"


def tier_path(symbol: str, tier: str) -> Path:
    return tiers_dir() / f"{symbol}_{tier}.parquet"


def splits_path(symbol: str, tier: str) -> Path:
    """Sidecar JSON with the split boundaries of one tier dataset (per horizon)."""
    return tiers_dir() / f"{symbol}_{tier}.splits.json"


def results_dir() -> Path:
    return project_root() / "results"


def study_dir(tier: str, budget: str, horizon: int) -> Path:
    """HPO outputs of one study: best.json, model.pt, metrics.json, trials.csv."""
    return results_dir() / "hpo" / tier / budget / f"h{horizon}"


def baselines_dir(tier: str, horizon: int) -> Path:
    """Baseline outputs: metrics.json (val/* and test/*) and predictions.parquet."""
    return results_dir() / "baselines" / tier / f"h{horizon}"


def cross_budget_dir(tier: str, horizon: int) -> Path:
    """Cross-budget outputs: matrix.json, heatmap.png, hparams.md."""
    return results_dir() / "cross_budget" / tier / f"h{horizon}"


def cross_tier_dir(budget: str, horizon: int) -> Path:
    """Cross-tier outputs of one budget: matrix.json, metrics.json, heatmap.png, hparams.md."""
    return results_dir() / "cross_tier" / budget / f"h{horizon}"


def promote_dir(tier: str, horizon: int) -> Path:
    """Promotion outputs: one sub-folder per budget (summary.json, predictions.parquet, reliability.png)."""
    return results_dir() / "promote" / tier / f"h{horizon}"


def reports_dir() -> Path:
    return project_root() / "reports"
