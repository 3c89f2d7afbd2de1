"""``params.yaml`` section ``report`` and the names the report's modules share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.errors import TierHpoError
from evaluation import scaling
from training import baseline_record

VERDICT_CODE = {scaling.MONOTONIC: 1, scaling.INCONCLUSIVE: 0, scaling.VIOLATED: -1}  # per-tier single-model test
BUDGET_VERDICT_CODE = {"monotonic": 1, "inconclusive": 0, "violated": -1}  # the grid's (selection record) words
TIER_VERDICT_CODE = {"more features help": 1, "inconclusive": 0, "more features hurt": -1}
# vol = a logistic regression on 5-day Parkinson volatility alone (training/baseline_record.py)
BASELINES = baseline_record.NAMES
REQUIRED_BASELINES = baseline_record.NAMES
BASELINE_NAMES = {"vol": "volatility (Parkinson 5d)", "logreg": "logistic regression", "hgb": "gradient boosting"}
MIN_IMPORTANCE_TRIALS = 30  # below this, PED-ANOVA importances are flagged as unstable


@dataclass(frozen=True)
class ReportParams:
    """``params.yaml`` section ``report``."""

    tiers: list[str] = field(default_factory=list)  # [] = every tier with HPO results (the grid)
    alpha: float = 0.05  # 1 - confidence of every interval; family-wise level of the paired tests
    method: Literal["stationary", "circular", "delong"] = "stationary"  # see evaluation/stats.py
    bootstrap_reps: int = 2000
    block_length: int | None = None  # None: max(horizon, Politis-White estimate)
    seed: int = 0
    top_k: int = 5
    efficiency_tol: float = 0.005  # "trials until the best was within this of the final best"
    coverage_bins: int = 5  # as hpo.coverage.bins, so the report bins like the sampler
    coverage_pairs: int = 3  # joint coverage for the pairs among the N most important parameters
    min_power_law_points: int = 4
    partial: bool = False  # write the report even when a downstream stage's output is missing

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise TierHpoError(f"report.alpha must be in (0, 0.5), got {self.alpha}")
        if self.bootstrap_reps < 100:
            raise TierHpoError(f"report.bootstrap_reps must be >= 100, got {self.bootstrap_reps}")
        if self.block_length is not None and self.block_length < 1:
            raise TierHpoError(f"report.block_length must be >= 1 or null (automatic), got {self.block_length}")
        if self.coverage_bins < 2:
            raise TierHpoError(f"report.coverage_bins must be >= 2, got {self.coverage_bins}")
        if self.top_k < 1 or self.coverage_pairs < 0 or self.min_power_law_points < 3:
            raise TierHpoError("report: top_k >= 1, coverage_pairs >= 0 and min_power_law_points >= 3 are required")
        if not self.efficiency_tol >= 0:
            raise TierHpoError(f"report.efficiency_tol must be >= 0, got {self.efficiency_tol}")

