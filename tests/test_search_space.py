"""Search space as data, feasibility filtering, forced extremes and coverage bins (no training)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from common import config
from common.errors import TierHpoError
from training.search.config import HpoConfig
from training.search.coverage import CoverageTracker
from training.search.feasibility import Feasibility
from training.search.forced import enqueue_forced, forced_configs
from training.search.space import ParamConfig, SearchSpace

SPACE = {
    "lr": ParamConfig("float", 1e-5, 1e-2, log=True),
    "dropout": ParamConfig("float", 0.0, 0.5),
    "n_layers": ParamConfig("int", 1, 6),
    "n_heads": ParamConfig("categorical", choices=[1, 2, 4, 8]),
    "batch_size": ParamConfig("categorical", choices=[64, 128, 256]),
}


def small_model(arch: dict) -> bool:
    """A stand-in budget rule: deep *and* wide does not fit (like 6 layers x 8 heads at 20K)."""
    return arch["n_layers"] * arch["n_heads"] <= 8


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.from_config(SPACE)


def test_unit_coordinate_round_trips_and_uses_log_scale(space):
    lr = space["lr"]
    assert lr.to_unit(1e-5) == 0.0 and lr.to_unit(1e-2) == pytest.approx(1.0)
    assert lr.to_unit(10 ** -3.5) == pytest.approx(0.5)  # the geometric middle
    assert lr.from_unit(0.5) == pytest.approx(10 ** -3.5)
    assert space["n_layers"].from_unit(1.0) == 6 and space["n_heads"].from_unit(1.0) == 8
    dists = space.distributions()
    assert isinstance(dists["lr"], optuna.distributions.FloatDistribution) and dists["lr"].log
    assert dists["n_heads"].choices == (1, 2, 4, 8)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log-scale parameter needs low > 0"),
        ({"type": "float", "low": 2.0, "high": 1.0}, "must be <="),
        ({"type": "categorical", "choices": []}, "non-empty 'choices'"),
        ({"type": "categorical", "choices": [1, 2], "low": 1}, "takes only 'choices'"),
        # numbers low to high (forced extremes, coverage bins and plots read the declared order)
        ({"type": "categorical", "choices": [128, 64, 256]}, r"low to high: \[128, 64, 256\] -> \[64, 128, 256\]"),
        ({"type": "int", "low": 1}, "needs 'low' and 'high'"),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 2}, "'step' is for int"),
    ],
)
def test_bad_space_entries_are_one_line_errors(raw, message):
    with pytest.raises(TierHpoError, match=message):
        SearchSpace.from_config({"x": config.build(ParamConfig, raw, where="hpo.space.x")})


def test_hpo_section_loads_with_typed_space(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "hpo:\n  tiers: [a50]\n  budgets: [20K]\n  horizons: [1]\n  trials: 4\n"
        "  space:\n    lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "  coverage: {bins: 4, target: 0.7, pairs: [[lr, lr2]]}\n"
    )
    cfg = config.load(HpoConfig, "hpo", tmp_path / "params.yaml", trials=7)
    assert cfg.trials == 7 and cfg.space["lr"].log and cfg.coverage.bins == 4
    with pytest.raises(TierHpoError, match="hpo.trials must be >= 1"):
        config.load(HpoConfig, "hpo", tmp_path / "params.yaml", trials=0)


def test_feasibility_restricts_values_and_repairs_to_nearest(space):
    feas = Feasibility.build(space, ("n_layers", "n_heads"), small_model)
    restricted = feas.restrict(space)
    assert restricted["n_layers"].values() == [1, 2, 3, 4, 5, 6]  # 1 head allows every depth
    assert (6, 8) not in feas.combos and (1, 8) in feas.combos
    fixed = feas.repair({"lr": 1e-3, "dropout": 0.1, "n_layers": 6, "n_heads": 8, "batch_size": 64}, restricted)
    assert feas.is_feasible(fixed) and fixed["lr"] == 1e-3
    never = Feasibility.build(space, ("n_layers",), lambda a: a["n_layers"] <= 2)
    assert never.restrict(space)["n_layers"].values() == [1, 2]
    with pytest.raises(TierHpoError, match="no architecture in hpo.space fits budget 1K"):
        Feasibility.build(space, ("n_layers",), lambda a: False, what="budget 1K")
    with pytest.raises(TierHpoError, match="must be int or categorical"):
        Feasibility.build(space, ("lr",), lambda a: True)


def test_forced_extremes_are_distinct_feasible_corners(space):
    feas = Feasibility.build(space, ("n_layers", "n_heads"), small_model)
    points = forced_configs(space, 6, inset=0.1, feasibility=feas)
    assert len(points) == 6 and len({space.key(p) for p in points}) == 6
    assert all(feas.is_feasible(p) for p in points)
    low, high = points[0], points[1]
    assert low["n_layers"] == 1 and low["n_heads"] == 1 and low["batch_size"] == 64
    assert high["batch_size"] == 256 and high["lr"] == pytest.approx(space["lr"].from_unit(0.9))
    # Every searched parameter is seen at both of its ends within the six points.
    for p in space.params:
        seen = {round(p.to_unit(pt[p.name]), 6) for pt in points}
        assert min(seen) <= 0.1 + 1e-9 and max(seen) >= 0.9 - 1e-9, p.name
    assert forced_configs(space, 6, 0.1, feas) == points  # deterministic


def test_enqueue_forced_is_idempotent_across_workers_and_resumes(space):
    points = forced_configs(space, 4)
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s")
    assert enqueue_forced(first, points) == [0, 1, 2, 3]
    again = optuna.load_study(storage=storage, study_name="s")  # a second worker / a resume
    assert enqueue_forced(again, points) == []
    waiting = again.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["forced_index"] for t in waiting] == [0, 1, 2, 3]
    assert {t.user_attrs["phase"] for t in waiting} == {"forced"}


def test_coverage_bins_reachability_and_gain(space):
    feas = Feasibility.build(space, ("n_layers", "n_heads"), small_model)
    space = feas.restrict(space)
    tracker = CoverageTracker(space, bins=4, pairs=[["n_layers", "n_heads"], ["lr", "batch_size"]], feasibility=feas)
    axes = {a.name: a for a in tracker.axes}
    assert axes["n_heads"].shape == (4,) and axes["lr"].shape == (4,) and axes["n_layers"].shape == (4,)
    assert len(axes["lr.batch_size"].reachable) == 12
    # Deep-and-wide bins are unreachable at this "budget", so they do not count against coverage.
    assert len(axes["n_layers.n_heads"].reachable) < 16
    empty = tracker.coverage([])
    assert empty.overall == 0.0
    point = {"lr": 1e-5, "dropout": 0.0, "n_layers": 1, "n_heads": 1, "batch_size": 64}
    cov = tracker.coverage([point])
    assert 0 < cov.overall < 1 and tracker.gain(cov, point) == 0.0
    other = {"lr": 1e-2, "dropout": 0.5, "n_layers": 6, "n_heads": 1, "batch_size": 256}
    assert tracker.gain(cov, other) > 0
    metrics = cov.metrics()
    assert set(metrics) == {"coverage/overall", *(f"coverage/{a}" for a in axes)}
    assert all(0 <= v <= 1 and math.isfinite(v) for v in metrics.values())
    snapshot = cov.to_json()
    assert snapshot["axes"]["lr"]["occupied"] == [[0]] and snapshot["n_points"] == 1


def test_bin_draw_lands_in_the_bin(space):
    rng = np.random.default_rng(0)
    for p in space.params:
        for b in range(p.n_bins(5)):
            assert p.bin_of(p.bin_draw(b, 5, rng), 5) == b


def test_non_numeric_choices_keep_any_declared_order():
    space = SearchSpace.from_config({"norm": ParamConfig("categorical", choices=["revin", "global"])})
    assert space["norm"].choices == ("revin", "global")
