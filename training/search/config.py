"""``params.yaml`` section ``hpo``: what to search, how, and which studies ``dvc repro`` runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import optuna

from common.errors import TierHpoError
from training.search.coverage import CoverageConfig
from training.search.space import ParamConfig


@dataclass(frozen=True)
class PrunerConfig:
    """``hpo.pruner``: an Optuna pruner on the per-epoch ``val/auc``."""

    kind: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = 5  # median: trials that finish before any pruning
    n_warmup_steps: int = 2  # median: epochs of every trial that are never pruned
    min_resource: int = 1  # hyperband: epochs of the smallest bracket
    reduction_factor: int = 3  # hyperband
    # The pruner is asked only while epoch <= until_fraction x max_epochs: a later prune saves the
    # few epochs left and throws away a nearly finished result (a "late-pruned" wasted trial);
    # past that point early stopping on val/auc ends a hopeless trial anyway. 1.0 = ask every epoch.
    until_fraction: float = 0.5

    def __post_init__(self) -> None:
        if min(self.n_startup_trials, self.n_warmup_steps) < 0 or self.min_resource < 1 or self.reduction_factor < 2:
            raise TierHpoError(
                "hpo.pruner: n_startup_trials/n_warmup_steps must be >= 0, min_resource >= 1, reduction_factor >= 2"
            )
        if not 0.0 < self.until_fraction <= 1.0:
            raise TierHpoError(f"hpo.pruner.until_fraction must be in (0, 1], got {self.until_fraction}")

    def build(self, max_epochs: int) -> optuna.pruners.BasePruner:
        if self.kind == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                               n_warmup_steps=self.n_warmup_steps)
        if self.kind == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=self.min_resource, max_resource=max_epochs,
                                                  reduction_factor=self.reduction_factor)
        return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class StorageConfig:
    """``hpo.storage``: crash detection for the Optuna RDB storage."""

    heartbeat_interval: int = 20  # seconds between a running trial's heartbeats
    grace_period: int = 60  # a RUNNING trial without a heartbeat for this long is failed and retried
    max_retry: int = 2  # retries of a trial whose worker died
    poll_seconds: float = 2.0  # wait between checks while running trials hold the last trial slots

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise TierHpoError("hpo.storage: need heartbeat_interval >= 1 and grace_period > heartbeat_interval")
        if self.max_retry < 0 or self.poll_seconds <= 0:
            raise TierHpoError("hpo.storage: need max_retry >= 0 and poll_seconds > 0")


@dataclass(frozen=True)
class HpoConfig:
    """The whole ``hpo`` section. ``tiers`` x ``budgets`` x ``horizons`` is the DVC matrix."""

    tiers: list[str]
    budgets: list[str]
    horizons: list[int]
    space: dict[str, ParamConfig]
    trials: int = 50  # COMPLETE trials per study
    forced: int = 6  # phase-1 forced extremes
    forced_inset: float = 0.1  # continuous forced values sit this far inside their range (unit coordinate)
    seed: int = 0
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    late_prune_fraction: float = 0.5  # pruned after more than this share of max_epochs = wasted
    storage: StorageConfig = field(default_factory=StorageConfig)
    log_every_s: float = 15.0  # flush per-epoch MLflow step metrics at most this often (and at the end)
    threads: int = 0  # torch threads of a single-process `tierhpo hpo` (workers = 1); 0 = all cores
    # worker processes of `tierhpo hpo` (--workers overrides); 0 = one per core (at most hpo.trials),
    # each with cores // workers torch threads: 1 thread each at one worker per core (BENCHMARKS.md)
    workers: int = 0
    # trials one worker asks at once (TPE's constant liar sees the running ones); those sharing
    # training.batched.group_key train as one train_batch, the others alone; 1 = one trial at a time
    batch_trials: int = 1
    refit_seeds: int = 3  # fresh seeds (never `seed`) the best configuration is retrained with, batched

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise TierHpoError(f"hpo.trials must be >= 1, got {self.trials}")
        if self.forced < 0:
            raise TierHpoError(f"hpo.forced must be >= 0, got {self.forced}")
        if not 0.0 <= self.forced_inset < 0.5:
            raise TierHpoError(f"hpo.forced_inset must be in [0, 0.5), got {self.forced_inset}")
        if not 0.0 < self.late_prune_fraction <= 1.0:
            raise TierHpoError(f"hpo.late_prune_fraction must be in (0, 1], got {self.late_prune_fraction}")
        if self.threads < 0 or self.log_every_s < 0:
            raise TierHpoError("hpo.threads and hpo.log_every_s must be >= 0")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise TierHpoError(f"hpo.workers must be an integer >= 0 (0 = one per core), got {self.workers!r}")
        if isinstance(self.batch_trials, bool) or not isinstance(self.batch_trials, int) or self.batch_trials < 1:
            raise TierHpoError(f"hpo.batch_trials must be an integer >= 1, got {self.batch_trials!r}")
        if self.refit_seeds < 0:
            raise TierHpoError(f"hpo.refit_seeds must be >= 0, got {self.refit_seeds}")
        if not self.tiers or not self.budgets or not self.horizons:
            raise TierHpoError("hpo.tiers, hpo.budgets and hpo.horizons must each list at least one value")
