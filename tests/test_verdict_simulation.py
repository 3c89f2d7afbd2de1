"""Verdicts that noise cannot fake, checked by simulation (issue 12), on the select stage's own machinery.

A world with a known truth: labels ``1{z1 + w z2 + e > c}`` (about 8 % positives), models that
share the same features and most of their errors (``z1 + n``, the common part nobody's inputs
explain), a larger model that also sees ``w z2`` (a true test AUC gap of about 0.03), and 5 seeds
per model whose seed-to-seed AUC sd is about 0.01 (what was measured at 200K). Each scenario is
simulated ``RUNS`` times with fresh days and seeds:

* two budgets of equal skill: the budget verdict is ``inconclusive`` in at least 95 % of runs;
* a true gap of 0.03 AUC: the larger budget is found better (``monotonic``) in at least 80 %;
* a best cell equal in skill to the best baseline: the champion gate passes in at most 5 %.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation import verdicts
from evaluation.seed_bootstrap import Comparison

pytestmark = pytest.mark.slow

# Power is bought with days and seeds. Measured with this file's world: 1,400 test days and 3 seeds
# detect the 0.03 gap in 60 % of runs (seed sd 0.01 makes the seed-mean of 3 noisy by 0.006 per
# model); 2,000 days and 5 seeds are needed for 80 %. The bundled S&P 500 has ~700 test days, so
# its default verdicts can only be "inconclusive" for gaps of this size: the report says so.
RUNS, N_DAYS, N_VAL, SEEDS, REPS = 200, 2000, 1000, 5, 200
W2, COMMON, SEED_NOISE = 0.4, 0.9, 0.45


def _world(rng):
    n = N_DAYS + N_VAL  # test days, then validation days
    z1, z2, common = rng.standard_normal(n), rng.standard_normal(n), COMMON * rng.standard_normal(n)
    y = (z1 + W2 * z2 + rng.standard_normal(n) > 1.95).astype(np.int64)
    return (z1 + common, W2 * z2), y


def _model(rng, world, sees_z2: bool, seeds=SEEDS):
    """(seeds, n) probabilities: the shared features (plus ``z2`` for the larger model) and per-seed noise."""
    base, extra = world
    score = base + (extra if sees_z2 else 0.0)
    out = [score + SEED_NOISE * rng.standard_normal(len(score)) for _ in range(seeds)]
    return 1 / (1 + np.exp(-(np.stack(out) - 2.5)))


def _rates(results):
    return {w: results.count(w) / len(results) for w in set(results)}


def test_equal_budgets_are_inconclusive_and_a_003_gap_is_found():
    rng = np.random.default_rng(12)
    null, gap = [], []
    for run in range(RUNS):
        world, y = _world(rng)
        t = slice(0, N_DAYS)
        small, same, better = _model(rng, world, False), _model(rng, world, False), _model(rng, world, True)
        cmp = Comparison(y[t], {"20K": small[:, t], "60K": same[:, t], "200K": better[:, t]}, n_boot=REPS, seed=run)
        null.append(verdicts.budget_verdict(cmp, ["20K", "60K"]).word)
        gap.append(cmp.diff("200K", "20K"))
    assert _rates(null).get("inconclusive", 0) >= 0.95, _rates(null)
    mean_gap = np.mean([d.estimate for d in gap])
    assert 0.025 < mean_gap < 0.035, mean_gap  # the simulated gap is the one the issue names
    detected = np.mean([d.low > 0 for d in gap])
    assert detected >= 0.80, detected


def test_a_cell_as_good_as_the_baseline_is_champion_in_at_most_5_percent():
    rng = np.random.default_rng(13)
    passed = 0
    for run in range(RUNS):
        world, y = _world(rng)
        t, v = slice(0, N_DAYS), slice(N_DAYS, None)
        cells = {f"a50/{b}": _model(rng, world, False) for b in ("20K", "60K", "200K")}
        # "equal" means equal to what is served, the seed ensemble: averaging seeds alone lowers the log
        # loss, so a one-seed baseline would lose to the ensemble for real and the gate would rightly pass
        base = _model(rng, world, False).mean(axis=0)
        best = max(cells, key=lambda k: float(pd.Series(cells[k][:, v].mean(0)).rank().corr(pd.Series(y[v]))))
        cmp = Comparison(y[t], {**{k: p[:, t] for k, p in cells.items()}, "logreg": base[t]}, n_boot=REPS, seed=run)
        val_losses = pd.DataFrame({k: _loss(y[v], p[:, v].mean(0)) for k, p in cells.items()})
        gate = verdicts.champion_gate(val_losses, _loss(y[v], base[v]), cmp, best, "logreg", reps=REPS, seed=run)
        passed += gate.passed
    assert passed / RUNS <= 0.05, passed / RUNS


def _loss(y, p):
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))
