"""A test-sized HPO study (tiny synthetic tier, 5K-parameter budget, 2 epochs), shared by the
engine tests and the subprocesses of the crash tests."""

from __future__ import annotations

from training.dataset import TierData
from training.search.config import PrunerConfig, StorageConfig
from training.search.coverage import CoverageConfig
from training.search.space import ParamConfig, SearchSpace
from training.search.study import StudySpec, WorkerSettings
from training.synthetic import synthetic_tier
from training.trainer import TrainConfig

SPACE = SearchSpace.from_config({
    "lr": ParamConfig("float", 1e-3, 1e-2, log=True),
    "dropout": ParamConfig("float", 0.0, 0.2),
    "n_layers": ParamConfig("int", 1, 2),
    "n_heads": ParamConfig("categorical", choices=[1, 2]),
    "batch_size": ParamConfig("categorical", choices=[64, 128]),
})


def tiny_data(n_days: int = 420) -> TierData:
    return synthetic_tier(n_days=n_days, n_features=6, context_len=8, seed=1)


def tiny_spec(data: TierData, **over) -> StudySpec:
    base = dict(
        tier="a20", budget="5K", horizon=1, space=SPACE, n_features=data.n_features, context_len=data.context_len,
        data_version="synthetic-1", train=TrainConfig(max_epochs=2, patience=2, progress=False, eval_batch_size=512),
        forced=2, coverage=CoverageConfig(bins=3, target=0.8, pairs=[["lr", "batch_size"]]),
        pruner=PrunerConfig(kind="none"),
    )
    base.update(over)
    return StudySpec(**base)


def settings(tracking_uri: str | None = None) -> WorkerSettings:
    """1 s heartbeats, 3 s grace: crash tests do not wait long for a stale trial."""
    return WorkerSettings(storage=StorageConfig(heartbeat_interval=1, grace_period=3, poll_seconds=0.2),
                          log_every_s=0.0, tracking_uri=tracking_uri)
