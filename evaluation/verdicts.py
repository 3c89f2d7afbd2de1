"""Verdicts in words, each derived from seed-aware tests on the same test days.

Budget axis (``budget_verdict``), budgets in order of size, on a ``Comparison``:
    the consecutive differences ``diff(larger, smaller)`` (two-level seed x day bootstrap), Holm-
    adjusted over the consecutive steps, plus the Model Confidence Set of their per-day log losses.
    ``violated``: some step is a significant loss; ``monotonic``: every step is a significant gain
    *and* the largest budget is in the MCS; ``inconclusive``: anything else.
Tier axis (``tier_verdict``), tiers in order of feature count (a20 < a50 < a100):
    the same consecutive Holm-adjusted differences. ``more features help``: at least one step
    is a significant gain and none a significant loss; ``more features hurt``: the mirror image;
    ``inconclusive``: no significant step, or gains and losses both.
``best_set``: the MCS over every model (cell) of a comparison.
``champion_gate``: SPA on VALIDATION over every trial the search tried against the best
    validation baseline (data snooping: the maximum of many trials is biased upward), AND the
    paired, seed-aware test difference ``model - baseline`` with an interval above 0.
The MCS is skipped (``None`` in the evidence) when some model's scores are not probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evaluation.seed_bootstrap import Comparison, Interval
from evaluation.selection import mcs_set, spa_pvalue

MONOTONIC, VIOLATED, INCONCLUSIVE = "monotonic", "violated", "inconclusive"
BUDGET_WORDS = (MONOTONIC, VIOLATED, INCONCLUSIVE)
HELP, HURT = "more features help", "more features hurt"
TIER_WORDS = (HELP, HURT, INCONCLUSIVE)
TIER_ORDER = ("a20", "a50", "a100")


@dataclass(frozen=True)
class Verdict:
    word: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, **self.evidence}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    spa_p: float
    test_diff: Interval

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "test_diff": self.test_diff.to_dict()}


def _steps(cmp: Comparison, order: Sequence[str]) -> list[dict[str, Any]]:
    if len(order) < 2:
        raise ValueError(f"a verdict needs at least two models in order, got {list(order)}")
    pairs = [(order[i + 1], order[i]) for i in range(len(order) - 1)]
    out = []
    for (hi, lo), d in zip(pairs, cmp.holm_family(pairs), strict=True):  # intervals at their Holm step's level
        sign = 0 if d.p_adjusted >= cmp.alpha else (1 if d.estimate > 0 else -1)
        out.append({"larger": hi, "smaller": lo, **d.to_dict(), "p_holm": d.p_adjusted, "sign": sign})
    return out


def best_set(cmp: Comparison, names: Sequence[str] | None = None, reps: int = 1000) -> list[str] | None:
    """MCS over ``names`` (default: every model) on per-day log loss; ``None`` without probabilities."""
    try:
        losses = cmp.losses(names)
    except ValueError:
        return None
    return mcs_set(losses, cmp.alpha, cmp.block_length, reps=reps, seed=cmp.seed)


def _evidence(cmp: Comparison, order: Sequence[str], steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"order": list(order), "steps": steps, "mcs": best_set(cmp, order), "alpha": cmp.alpha,
            "correction": "holm", "block_length": cmp.block_length, "n_boot": cmp.n_boot,
            "n_seeds": {n: cmp.n_seeds(n) for n in order}, "auc": {n: cmp.auc(n).to_dict() for n in order}}


def budget_verdict(cmp: Comparison, budgets_in_order: Sequence[str]) -> Verdict:
    steps = _steps(cmp, budgets_in_order)
    ev = _evidence(cmp, budgets_in_order, steps)
    signs = [s["sign"] for s in steps]
    if -1 in signs:
        return Verdict(VIOLATED, ev)
    largest_in_mcs = ev["mcs"] is None or budgets_in_order[-1] in ev["mcs"]
    if all(s == 1 for s in signs) and largest_in_mcs:
        return Verdict(MONOTONIC, ev)
    return Verdict(INCONCLUSIVE, ev)


def tier_verdict(cmp: Comparison, tiers_in_order: Sequence[str] = TIER_ORDER) -> Verdict:
    steps = _steps(cmp, tiers_in_order)
    signs = {s["sign"] for s in steps}
    word = HELP if signs == {1} or signs == {0, 1} else HURT if signs in ({-1}, {-1, 0}) else INCONCLUSIVE
    return Verdict(word, _evidence(cmp, tiers_in_order, steps))


def champion_gate(
    val_losses_trials: pd.DataFrame,
    val_benchmark_losses: np.ndarray | pd.Series,
    test_cmp: Comparison,
    model: str,
    baseline: str,
    *,
    block: int | None = None,
    reps: int = 1000,
    seed: int = 0,
) -> GateResult:
    """Champion only if SPA rejects "no trial beats the baseline" on val AND the test diff interval is > 0.

    ``val_losses_trials``: (val days x models) per-day log loss of every model tried (select passes
    the grid's cells);
    ``val_benchmark_losses``: the best validation baseline's per-day log loss. ``block``: the
    SPA's block length (default: the test comparison's).
    """
    alpha = test_cmp.alpha
    spa_p = spa_pvalue(val_benchmark_losses, val_losses_trials, block or test_cmp.block_length, reps=reps, seed=seed)
    test_diff = test_cmp.diff(model, baseline)
    n = val_losses_trials.shape[1]
    if spa_p >= alpha:
        return GateResult(False, f"SPA over {n} models cannot reject 'none beats {baseline}' on val "
                                 f"(p={spa_p:.3g} >= {alpha:g})", spa_p, test_diff)
    if test_diff.low <= 0:
        return GateResult(False, f"test AUC {model} - {baseline} = {test_diff.estimate:+.4f} "
                                 f"[{test_diff.low:+.4f}, {test_diff.high:+.4f}] does not exclude 0", spa_p, test_diff)
    return GateResult(True, f"SPA p={spa_p:.3g} over {n} models on val; test AUC {model} - {baseline} = "
                            f"{test_diff.estimate:+.4f} [{test_diff.low:+.4f}, {test_diff.high:+.4f}]", spa_p, test_diff)
