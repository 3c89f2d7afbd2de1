"""The select stage's decisions on scores with a known truth (pure: no store, no training)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import TierHpoError
from pipelines.select.decide import SelectConfig, decide
from pipelines.select.registry import pick_candidate
from pipelines.select.scores import CellScores, Scores
from training.selection_record import SelectionRecord

N_VAL, N_TEST, SEEDS = 600, 600, 3
CFG = SelectConfig(bootstrap_reps=200, mcs_reps=100, spa_reps=200, block_length=2)


def _days(start: str, n: int) -> np.ndarray:
    return np.datetime64(start) + np.arange(n).astype("timedelta64[D]")


def _world(seed: int = 0):
    rng = np.random.default_rng(seed)
    latent = {s: rng.standard_normal(n) for s, n in (("val", N_VAL), ("test", N_TEST))}
    y = {s: (latent[s] + rng.standard_normal(len(latent[s])) > 0.8).astype(np.int64) for s in latent}
    dates = {"val": _days("2020-01-01", N_VAL), "test": _days("2023-01-01", N_TEST)}
    return rng, latent, y, dates


def _calibrated(rng, latent, y, noise: float) -> dict[str, np.ndarray]:
    """A model that sees the latent signal through ``noise``, Platt-calibrated on val (as select does)."""
    from sklearn.linear_model import LogisticRegression

    z = {s: latent[s] + noise * rng.standard_normal(len(latent[s])) for s in latent}
    fit = LogisticRegression().fit(z["val"][:, None], y["val"])
    return {s: fit.predict_proba(z[s][:, None])[:, 1] for s in z}


def _cell(rng, latent, y, dates, tier, budget, n_params, noise, seeds=SEEDS):
    members = [_calibrated(rng, latent, y, noise) for _ in range(seeds)]
    splits = {s: Scores(dates[s], y[s], np.stack([m[s] for m in members])) for s in latent}
    return CellScores(tier, budget, n_params, f"{tier}-{budget}", splits,
                      [0.7 + 0.01 * rng.standard_normal() for _ in range(seeds)], n_trials=10, trial_spread_val=0.002)


def _baselines(rng, latent, y, dates, noises):
    out = {}
    for name, noise in noises.items():
        p = _calibrated(rng, latent, y, noise)
        out[name] = {s: Scores(dates[s], y[s], p[s][None, :]) for s in latent}
    return out


def test_a_clearly_better_cell_is_best_and_passes_the_gate():
    rng, latent, y, dates = _world(0)
    cells = [_cell(rng, latent, y, dates, "a20", "20K", 20_000, 2.0),
             _cell(rng, latent, y, dates, "a20", "60K", 60_000, 2.0),
             _cell(rng, latent, y, dates, "a50", "20K", 20_000, 2.0),
             _cell(rng, latent, y, dates, "a50", "60K", 60_000, 0.3)]
    base = {t: _baselines(rng, latent, y, dates, {"vol": 2.5, "logreg": 2.0, "hgb": 2.0}) for t in ("a20", "a50")}
    rec = decide(cells, base, CFG, symbol="SYN", horizon=1, base_rates={"train": 0.3, "val": 0.3, "test": 0.3})
    assert rec.best == {"tier": "a50", "budget": "60K"}
    assert rec.gate.passed, rec.gate.reason
    assert rec.cell("a50", "60K").in_mcs and not rec.cell("a20", "20K").in_mcs
    assert rec.tier_verdicts["60K"].verdict == "more features help"
    assert rec.tier_verdicts["20K"].verdict == "inconclusive"  # a20 and a50 carry the same signal at 20K
    assert rec.budget_verdicts["a50"].verdict == "monotonic"
    assert all(v.diff.low > 0 and v.diff.p_adjusted < CFG.alpha for v in rec.vs_baselines)
    assert all(0.95 <= v.diff.level < 1 for v in rec.vs_baselines)  # Holm-step intervals are never narrower
    assert rec.n_test_days == N_TEST and rec.n_seeds == SEEDS
    assert SelectionRecord.from_dict(__import__("dataclasses").asdict(rec)) == rec  # the contract round-trips


def test_cells_no_better_than_a_baseline_get_no_champion_and_inconclusive_words():
    rng, latent, y, dates = _world(1)
    cells = [_cell(rng, latent, y, dates, t, b, n, 1.5) for t in ("a20", "a50")
             for b, n in (("20K", 20_000), ("60K", 60_000))]
    base = {t: _baselines(rng, latent, y, dates, {"vol": 1.5, "logreg": 1.5, "hgb": 1.5}) for t in ("a20", "a50")}
    rec = decide(cells, base, CFG, symbol="SYN", horizon=1, base_rates={"train": 0.3, "val": 0.3, "test": 0.3})
    assert not rec.gate.passed and rec.gate.reason
    # two tiers with the same signal, at every budget: the tier axis cannot be told apart
    assert {b: v.verdict for b, v in rec.tier_verdicts.items()} == {"20K": "inconclusive", "60K": "inconclusive"}
    assert {t: v.verdict for t, v in rec.budget_verdicts.items()} == {"a20": "inconclusive", "a50": "inconclusive"}
    for v in rec.vs_baselines:  # an interval covers 0 exactly where the adjusted reading is not significant
        assert (v.diff.low > 0 or v.diff.high < 0) == (v.diff.p_adjusted < CFG.alpha)
    assert all(c.test.low < c.test.estimate < c.test.high for c in rec.cells)


def test_days_are_aligned_and_stale_labels_refused():
    rng, latent, y, dates = _world(2)
    a = _cell(rng, latent, y, dates, "a20", "20K", 20_000, 1.5)
    b = _cell(rng, latent, y, dates, "a50", "20K", 20_000, 1.5)
    # a50 starts two days later on test: only the common days are compared
    b.splits["test"] = Scores(dates["test"][2:], y["test"][2:], b.splits["test"].p[:, 2:])
    base = {t: _baselines(rng, latent, y, dates, {"vol": 1.5, "logreg": 1.5, "hgb": 1.5}) for t in ("a20", "a50")}
    rec = decide([a, b], base, CFG, symbol="SYN", horizon=1, base_rates={})
    assert rec.n_test_days == N_TEST - 2
    flipped = y["test"].copy()
    flipped[10] = 1 - flipped[10]
    b.splits["test"] = Scores(dates["test"], flipped, np.repeat(b.splits["test"].p[:, :1], N_TEST, axis=1))
    with pytest.raises(TierHpoError, match="disagrees .* label"):
        decide([a, b], base, CFG, symbol="SYN", horizon=1, base_rates={})


def test_candidate_falls_back_to_the_best_registered_cell():
    rng, latent, y, dates = _world(3)
    cells = [_cell(rng, latent, y, dates, "a20", "20K", 20_000, 2.0),
             _cell(rng, latent, y, dates, "a50", "20K", 20_000, 0.3)]
    base = {t: _baselines(rng, latent, y, dates, {"vol": 2.5, "logreg": 2.0, "hgb": 2.0}) for t in ("a20", "a50")}
    rec = decide(cells, base, CFG, symbol="SYN", horizon=1, base_rates={})
    assert pick_candidate(rec, {"a50/20K": ("m", 1), "a20/20K": ("n", 1)}) == "a50/20K"
    assert pick_candidate(rec, {"a50/20K": None, "a20/20K": ("n", 1)}) == "a20/20K"
    assert pick_candidate(rec, {"a50/20K": None, "a20/20K": None}) is None


def test_select_config_is_validated():
    with pytest.raises(TierHpoError, match="select.alpha"):
        SelectConfig(alpha=0.7)
    with pytest.raises(TierHpoError, match="select.bootstrap_reps"):
        SelectConfig(bootstrap_reps=3)
