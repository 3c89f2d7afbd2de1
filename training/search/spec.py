"""A study's identity: ``StudySpec`` (everything that defines a study) -> ``study_name``, and the
``Engine`` a process derives from it once (budget-feasible space, coverage bins, forced points).

``spec.study_name`` is ``"{tier}-{budget}-h{horizon}-{hash}"``; the hash covers the search space,
the model/trainer/metric settings that change results, the tier version, the seed, the forced
phase, the coverage and pruner settings and the sampler. Not covered: the number of trials (so a
larger ``--trials`` extends a study), threads, storage and tracking locations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from common.errors import TierHpoError
from evaluation.metrics import MetricsParams
from training.budget import ModelParams, format_budget, parse_budget
from training.dataset import TierData
from training.search.config import HpoConfig, PrunerConfig
from training.search.coverage import CoverageConfig, CoverageTracker
from training.search.feasibility import Feasibility
from training.search.forced import forced_configs
from training.search.objective import ARCH_PARAMS, STRUCTURAL
from training.search.space import SearchSpace
from training.trainer import TrainConfig

SPEC_ATTR = "tierhpo_spec"
Sampler = Literal["coverage", "tpe", "random"]
_NOT_HASHED_TRAIN = ("progress", "eval_batch_size", "max_memory_gb")  # do not change results


@dataclass(frozen=True)
class StudySpec:
    tier: str
    budget: str
    horizon: int
    space: SearchSpace
    n_features: int
    context_len: int
    tier_version: str  # md5s of the validated tier files the study trains on (pipelines.hpo.tier_version)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsParams = field(default_factory=MetricsParams)
    seed: int = 0
    forced: int = 6
    forced_inset: float = 0.1
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    late_prune_fraction: float = 0.5
    sampler: Sampler = "coverage"  # "tpe" / "random": the benchmark's baselines (no steering, no repair)
    symbol: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", format_budget(parse_budget(self.budget)))
        unknown = [n for n in self.space.names
                   if n not in ARCH_PARAMS and n not in {f.name for f in dataclasses.fields(TrainConfig)}]
        if unknown:
            raise TierHpoError(
                f"hpo.space: {unknown} are neither architecture parameters {list(ARCH_PARAMS)} nor fields of "
                "training.trainer.TrainConfig; rename or remove them"
            )
        if self.sampler not in ("coverage", "tpe", "random"):
            raise TierHpoError(f"unknown sampler {self.sampler!r}; use coverage, tpe or random")

    @classmethod
    def from_params(cls, hpo: HpoConfig, *, tier: str, budget: str, horizon: int, data: TierData,
                    tier_version: str, model: ModelParams, train: TrainConfig, metrics: MetricsParams,
                    symbol: str = "") -> StudySpec:
        return cls(
            tier=tier, budget=budget, horizon=horizon, space=SearchSpace.from_config(hpo.space),
            n_features=data.n_features, context_len=data.context_len, tier_version=tier_version,
            model=model, train=train, metrics=metrics, seed=hpo.seed, forced=hpo.forced,
            forced_inset=hpo.forced_inset, coverage=hpo.coverage, pruner=hpo.pruner,
            late_prune_fraction=hpo.late_prune_fraction, symbol=symbol,
        )

    def identity(self) -> dict[str, Any]:
        """What the study name's hash covers (stored in the study, checked on every load).

        The tier version is hashed under its old key ``data_version``: renaming the key would rename
        every existing study (a new hash) and orphan its trials in the store."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _NOT_HASHED_TRAIN}
        return {
            "tier": self.tier, "budget": self.budget, "horizon": self.horizon, "symbol": self.symbol,
            "space": self.space.to_json(), "n_features": self.n_features, "context_len": self.context_len,
            "data_version": self.tier_version, "model": dataclasses.asdict(self.model), "train": train,
            "metrics": dataclasses.asdict(self.metrics), "seed": self.seed, "forced": self.forced,
            "forced_inset": self.forced_inset, "coverage": dataclasses.asdict(self.coverage),
            "pruner": dataclasses.asdict(self.pruner), "late_prune_fraction": self.late_prune_fraction,
            "sampler": self.sampler,
        }

    @property
    def study_name(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return f"{self.tier}-{self.budget}-h{self.horizon}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Engine:
    """What a process derives from a spec once: the budget-feasible space, coverage bins, forced points."""

    spec: StudySpec
    space: SearchSpace  # the declared space without values no feasible architecture uses
    feasibility: Feasibility
    tracker: CoverageTracker
    forced: list[dict[str, Any]]


def build_engine(spec: StudySpec) -> Engine:
    def fits(arch: dict[str, Any]) -> bool:
        return spec.model.solve(spec.budget, spec.n_features, spec.context_len, **arch) is not None

    structural = tuple(n for n in STRUCTURAL if n in spec.space)
    feasibility = Feasibility.build(spec.space, structural, fits, what=f"budget {spec.budget}")
    space = feasibility.restrict(spec.space)  # baselines (tpe/random) search it too, without the joint repair
    tracker = CoverageTracker(space, spec.coverage.bins, spec.coverage.pairs, feasibility)
    forced = forced_configs(space, spec.forced, spec.forced_inset, feasibility) if spec.forced else []
    return Engine(spec, space, feasibility, tracker, forced)
