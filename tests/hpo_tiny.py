"""A test-sized HPO study (tiny synthetic tier, 5K-parameter budget, the shrunk train section's 2
epochs), shared by the engine tests and the subprocesses of the crash tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from common import paths
from tests.shrink import train_config  # tests.shrink: the crash tests' subprocesses import tests.hpo_tiny
from training.dataset import TierData
from training.search.config import PrunerConfig, StorageConfig
from training.search.coverage import CoverageConfig
from training.search.space import ParamConfig, SearchSpace
from training.search.study import StudySpec, WorkerSettings
from training.synthetic import synthetic_tier

SPACE_CONFIG = {
    "lr": ParamConfig("float", 1e-3, 1e-2, log=True),
    "dropout": ParamConfig("float", 0.0, 0.2),
    "n_layers": ParamConfig("int", 1, 2),
    "n_heads": ParamConfig("categorical", choices=[1, 2]),
    "batch_size": ParamConfig("categorical", choices=[64, 128]),
}
SPACE = SearchSpace.from_config(SPACE_CONFIG)


def tiny_data(n_days: int = 420) -> TierData:
    return synthetic_tier(n_days=n_days, n_features=6, context_len=8, seed=1)


def space(**over: ParamConfig) -> SearchSpace:
    """:data:`SPACE` with some parameters' ranges changed."""
    return SearchSpace.from_config({**SPACE_CONFIG, **over})


def tiny_train(**over):
    """The shrunk ``train`` section (tests/shrink.py: 2 epochs), patient for both, quiet, small eval batches."""
    return train_config(**{"patience": 2, "progress": False, "eval_batch_size": 512, **over})


def tiny_spec(data: TierData, **over) -> StudySpec:
    base = dict(
        tier="a20", budget="5K", horizon=1, space=SPACE, n_features=data.n_features, context_len=data.context_len,
        tier_version="synthetic-1", train=tiny_train(),
        forced=2, coverage=CoverageConfig(bins=3, target=0.8, pairs=[["lr", "batch_size"]]),
        pruner=PrunerConfig(kind="none"),
    )
    base.update(over)
    return StudySpec(**base)


def settings(tracking_uri: str | None = None) -> WorkerSettings:
    """1 s heartbeats, 3 s grace: crash tests do not wait long for a stale trial."""
    return WorkerSettings(storage=StorageConfig(heartbeat_interval=1, grace_period=3, poll_seconds=0.2),
                          log_every_s=0.0, tracking_uri=tracking_uri)


@pytest.fixture(scope="module")
def store_templates(tmp_path_factory):
    """Empty MLflow and Optuna databases, created once: creating their tables (Alembic migrations)
    costs seconds, copying the files costs nothing. Every test still gets its own stores."""
    root = tmp_path_factory.mktemp("templates")
    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    optuna.storages.RDBStorage(f"sqlite:///{root / 'optuna.db'}")
    return root


def stores_from_templates(templates: Path, root: Path) -> tuple[str, str]:
    """Copies of the template stores in ``root``: ``(optuna storage URL, MLflow tracking URI)``."""
    for name in ("mlflow.db", "optuna.db"):
        shutil.copyfile(templates / name, root / name)
    return f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def fresh_stores_from_templates(store_templates, isolated_stores):
    stores_from_templates(store_templates, isolated_stores)


def child_runs(client: MlflowClient, parent_id: str):
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def default_storage() -> str:
    return paths.optuna_storage_url()
