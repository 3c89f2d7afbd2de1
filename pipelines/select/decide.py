"""From aligned scores to the selection record: intervals, verdicts, the best cell and the gate.

Everything on test is one ``evaluation.seed_bootstrap.Comparison`` (two-level bootstrap over
seeds and blocks of the same test days), so every interval and every difference shares one block
length and one set of day draws.

* ``best``: the cell with the highest *validation* AUC of its seed ensemble (the test split
  chooses nothing); ties go to the smaller model.
* ``vs_baselines``: the best cell minus each baseline on test, Holm-adjusted over the baselines.
* ``gate`` (champion): ``evaluation.verdicts.champion_gate`` against the baseline with the best
  validation AUC: the SPA test on validation over *every cell of the grid* (how many models were
  tried) must reject "no cell beats the baseline", and the paired test difference must exclude 0;
  and the best cell must also beat every other baseline after Holm. Cells are the grid's
  candidates; the trials inside each study are not in the SPA (their validation predictions are
  not kept), which is why every cell is scored by fresh seeds rather than its search winner.
* Budget verdicts per tier, tier verdicts per budget, and the MCS of the cells on per-day log loss.
* Baselines exist per tier (each tier's features); each baseline name enters with the tier
  variant that scored best on validation, so the hurdle is the strongest simple model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation import verdicts
from evaluation.auc import rank_auc
from evaluation.seed_bootstrap import Comparison
from pipelines.select.scores import CellScores, Scores, align, common_days
from training import baseline_record
from training import selection_record as rec
from training.budget import parse_budget

TEST_NAME = "two-level bootstrap (seeds x stationary day blocks), paired AUC difference"


@dataclass(frozen=True)
class SelectConfig:
    """``params.yaml`` section ``select``."""

    alpha: float = 0.05
    bootstrap_reps: int = 2000
    mcs_reps: int = 1000
    spa_reps: int = 1000
    block_length: int | None = None  # None = Politis-White on the weighted AUC contributions
    seed: int = 0

    def __post_init__(self) -> None:
        from common.errors import TierHpoError

        if not 0 < self.alpha < 0.5:
            raise TierHpoError(f"select.alpha must be in (0, 0.5), got {self.alpha}")
        for name in ("bootstrap_reps", "mcs_reps", "spa_reps"):
            if getattr(self, name) < 10:
                raise TierHpoError(f"select.{name} must be at least 10, got {getattr(self, name)}")
        if self.block_length is not None and self.block_length < 1:
            raise TierHpoError(f"select.block_length must be >= 1 or null, got {self.block_length}")


def log_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-day log loss of probabilities ``p`` (n,): sklearn's log_loss averages, the MCS needs each day."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _interval(i: Any) -> rec.Interval:
    return rec.Interval(float(i.estimate), float(i.low), float(i.high),
                        None if i.p_value is None else float(i.p_value), i.p_adjusted, i.level)


def tier_rank(tier: str) -> int:
    order = verdicts.TIER_ORDER
    return order.index(tier) if tier in order else len(order)


def decide(cells: list[CellScores], baselines: dict[str, dict[str, dict[str, Scores]]], cfg: SelectConfig, *,
           symbol: str, horizon: int, base_rates: dict[str, float]) -> rec.SelectionRecord:
    """The selection record of one horizon. ``baselines``: ``{tier: {name: {split: Scores}}}``."""
    models: list[dict[str, Scores]] = [c.splits for c in cells] + [b for t in baselines.values() for b in t.values()]
    days = {s: common_days(models, s) for s in ("val", "test")}
    first = cells[0]
    y = {s: align(first.splits[s], days[s], None, first.key)[0] for s in days}
    cell_p = {c.key: {s: align(c.splits[s], days[s], y[s], f"cell {c.key}")[1] for s in days} for c in cells}

    chosen: dict[str, dict[str, np.ndarray]] = {}
    chosen_tier: dict[str, str] = {}
    for name in baseline_record.NAMES:
        variants = {t: {s: align(b[name][s], days[s], y[s], f"baseline {name} of {t}")[1][0] for s in days}
                    for t, b in baselines.items()}
        tier = max(variants, key=lambda t: (float(rank_auc(y["val"], variants[t]["val"])), -tier_rank(t)))
        chosen[name], chosen_tier[name] = variants[tier], tier

    val_auc = {k: float(rank_auc(y["val"], p["val"].mean(axis=0))) for k, p in cell_p.items()}
    by_key = {c.key: c for c in cells}
    best = max(cells, key=lambda c: (val_auc[c.key], -c.n_params)).key

    cmp = Comparison(y["test"], {**{k: p["test"] for k, p in cell_p.items()}, **{n: v["test"] for n, v in chosen.items()}},
                     alpha=cfg.alpha, n_boot=cfg.bootstrap_reps, seed=cfg.seed, horizon=horizon,
                     block_length=cfg.block_length)
    keys = [c.key for c in cells]
    members = verdicts.best_set(cmp, keys, reps=cfg.mcs_reps) or []
    out_cells = [rec.Cell(c.tier, c.budget, c.n_params, val_auc[c.key], _interval(cmp.auc(c.key)), c.key in members,
                          float(np.std(c.seed_val_aucs, ddof=1)) if len(c.seed_val_aucs) > 1 else None)
                 for c in cells]

    names = list(baseline_record.NAMES)
    family = cmp.holm_family([(best, n) for n in names])  # intervals at the level of their Holm step
    vs = [rec.VsBaseline(n, TEST_NAME, _interval(d)) for n, d in zip(names, family, strict=True)]

    hurdle = max(names, key=lambda n: float(rank_auc(y["val"], chosen[n]["val"])))
    val_losses = pd.DataFrame({k: log_losses(y["val"], p["val"].mean(axis=0)) for k, p in cell_p.items()})
    g = verdicts.champion_gate(val_losses, log_losses(y["val"], chosen[hurdle]["val"]), cmp, best, hurdle,
                               reps=cfg.spa_reps, seed=cfg.seed)
    n_trials = sum(c.n_trials for c in cells)
    passed, reason = g.passed, g.reason + f" (the {len(cells)} cells of the grid; {n_trials} trials searched)"
    losing = [v.baseline for v in vs if not (v.diff.estimate > 0 and (v.diff.p_adjusted or 1.0) < cfg.alpha)]
    if passed and losing:
        passed, reason = False, (f"{best} beats the best validation baseline {hurdle} but not {', '.join(losing)} "
                                 f"on test after Holm over {len(names)} baselines")

    tiers = sorted({c.tier for c in cells}, key=tier_rank)
    budgets = sorted({c.budget for c in cells}, key=parse_budget)
    budget_verdicts, tier_verdicts = {}, {}
    for t in tiers:
        order = sorted((c for c in cells if c.tier == t), key=lambda c: (c.n_params, parse_budget(c.budget)))
        if len(order) >= 2:
            v = verdicts.budget_verdict(cmp, [c.key for c in order])
            budget_verdicts[t] = rec.Verdict(v.word, jsonable(v.evidence))
    for b in budgets:
        order = [f"{t}/{b}" for t in tiers if f"{t}/{b}" in by_key]
        if len(order) >= 2:
            v = verdicts.tier_verdict(cmp, order)
            tier_verdicts[b] = rec.Verdict(v.word, jsonable(v.evidence))

    return rec.SelectionRecord(
        horizon=horizon, symbol=symbol, alpha=cfg.alpha, adjustment="holm", block_length=float(cmp.block_length),
        n_test_days=int(len(y["test"])), n_seeds=min(len(c.seed_val_aucs) for c in cells),
        base_rates=base_rates, tiers=tiers, budgets=budgets, cells=out_cells,
        baselines={n: rec.BaselineCell(float(rank_auc(y["val"], chosen[n]["val"])), _interval(cmp.auc(n)))
                   for n in names},
        best={"tier": by_key[best].tier, "budget": by_key[best].budget},
        vs_baselines=vs, budget_verdicts=budget_verdicts, tier_verdicts=tier_verdicts,
        mcs={"alpha": cfg.alpha, "members": members, "baseline_tiers": chosen_tier},
        gate=rec.Gate(bool(passed), reason, float(g.spa_p), hurdle),
        trial_spread_val={c.key: c.trial_spread_val for c in cells if c.trial_spread_val is not None},
    )
