"""CoverageSampler with a cheap synthetic objective (the engine tests use the real trainer)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.samplers import TPESampler

from training.search.coverage import CoverageTracker
from training.search.feasibility import Feasibility
from training.search.forced import enqueue_forced, forced_configs
from training.search.sampler import CoverageSampler
from training.search.space import ParamConfig, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = SearchSpace.from_config({
    "lr": ParamConfig("float", 1e-5, 1e-2, log=True),
    "dropout": ParamConfig("float", 0.0, 0.5),
    "n_layers": ParamConfig("int", 1, 6),
    "n_heads": ParamConfig("categorical", choices=[1, 2, 4, 8]),
    "batch_size": ParamConfig("categorical", choices=[64, 128, 256]),
})
PAIRS = [["lr", "batch_size"], ["n_layers", "n_heads"]]


def fake_auc(p: dict) -> float:
    """A smooth stand-in for val/auc with its optimum inside the space."""
    return 0.8 - 0.05 * (np.log10(p["lr"]) + 3.5) ** 2 - 0.3 * (p["dropout"] - 0.2) ** 2 - 0.01 * p["n_layers"]


def run(steer: bool, n: int, seed: int = 0, feasible=lambda a: True, storage=None, name="s", forced: int = 0):
    feas = Feasibility.build(SPACE, ("n_layers", "n_heads"), feasible)
    space = feas.restrict(SPACE)
    tracker = CoverageTracker(space, bins=4, pairs=PAIRS, feasibility=feas)
    sampler = CoverageSampler(space, tracker, seed=seed, target=0.9, candidates=8, feasibility=feas, steer=steer)
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage, study_name=name,
                                load_if_exists=True)
    if forced:
        enqueue_forced(study, forced_configs(space, forced, 0.1, feas))
    phases = []

    def objective(trial):
        params = {p.name: p.suggest(trial) for p in space.params}
        decision = sampler.decision(trial.number)
        phases.append(decision.phase if decision else "forced")
        assert feas.is_feasible(params)
        return fake_auc(params)

    study.optimize(objective, n_trials=n)
    return study, tracker, phases


def test_steering_fills_more_bins_than_plain_tpe_at_the_same_trial_count():
    mean_cov = {
        steer: np.mean([tracker.from_trials(study.trials).overall for study, tracker, _ in (run(steer, 12, s) for s in range(3))])
        for steer in (True, False)
    }
    assert mean_cov[True] > mean_cov[False]


def test_steered_proposals_land_in_empty_bins():
    study, tracker, phases = run(True, 10)
    trials = study.get_trials()
    for i, t in enumerate(trials[1:], start=1):
        if phases[i] == "coverage":
            before = tracker.coverage(x.params for x in trials[:i])
            assert tracker.gain(before, t.params) > 0, f"trial {i} was steered but filled no empty bin"
    assert "coverage" in phases


def test_infeasible_structures_are_never_proposed():
    study, _, _ = run(True, 15, feasible=lambda a: a["n_layers"] * a["n_heads"] <= 4)
    assert all(t.params["n_layers"] * t.params["n_heads"] <= 4 for t in study.get_trials())


def test_no_duplicates_until_a_discrete_space_is_exhausted():
    space = SearchSpace.from_config({"a": ParamConfig("categorical", choices=[1, 2, 3]),
                                     "b": ParamConfig("int", 0, 2)})
    tracker = CoverageTracker(space, bins=3)
    sampler = CoverageSampler(space, tracker, seed=1, target=1.0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(space["a"].suggest(t) + space["b"].suggest(t)), n_trials=9)
    keys = [space.key(t.params) for t in study.get_trials()]
    assert len(set(keys)) == 9  # all 9 configs, each once
    assert tracker.from_trials(study.trials).overall == 1.0


def test_same_seed_same_proposals_and_forced_first():
    a, _, phases = run(True, 9, seed=3, forced=4)
    b, _, _ = run(True, 9, seed=3, forced=4)
    assert [t.params for t in a.get_trials()] == [t.params for t in b.get_trials()]
    assert phases[:4] == ["forced"] * 4 and "forced" not in phases[4:]


def test_state_comes_from_storage_so_a_resumed_sampler_continues(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, tracker, _ = run(True, 5, storage=url, name="r")
    before = tracker.from_trials(study.trials)
    assert before.overall < 0.9
    # A new process: a fresh sampler object on the same storage sees the same coverage and keeps steering.
    sampler = CoverageSampler(tracker.space, tracker, seed=0, target=0.9, candidates=8)
    resumed = optuna.load_study(study_name="r", storage=url, sampler=sampler)
    trial = resumed.ask()
    params = {p.name: p.suggest(trial) for p in tracker.space.params}
    decision = sampler.decision(trial.number)
    assert decision.coverage_before == pytest.approx(before.overall)
    assert decision.phase == "coverage" and tracker.gain(before, params) > 0


def test_private_tpe_method_the_sampler_relies_on_still_exists():
    assert callable(getattr(TPESampler, "_sample_relative", None)), "Optuna changed TPESampler internals"


@pytest.mark.parametrize("steer", [True, False])
def test_best_value_is_sane(steer):
    study, _, _ = run(steer, 20)
    assert study.best_value > 0.7


@pytest.mark.parametrize("kind", ["coverage", "tpe", "random"])
def test_a_fresh_sampler_continues_the_study_as_the_first_one_would_have(kind):
    """Resume: a new process (a new sampler object, its RNG at the start) on the stored history
    proposes what the process that ran the first trials would have proposed next."""
    from training.search.sampler import SeededRandomSampler, SeededTPESampler

    def go(storage, n):
        if kind == "coverage":
            return run(True, n, seed=3, storage=storage, name="r")[0]
        sampler = SeededTPESampler(seed=3) if kind == "tpe" else SeededRandomSampler(seed=3)
        study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage, study_name="r",
                                    load_if_exists=True)
        study.optimize(lambda t: fake_auc({p.name: p.suggest(t) for p in SPACE.params}), n_trials=n)
        return study

    straight = go(optuna.storages.InMemoryStorage(), 14)
    split = optuna.storages.InMemoryStorage()
    go(split, 11)  # past TPE's 10 start-up trials, so the second half draws from TPE
    resumed = go(split, 3)
    assert [t.params for t in resumed.get_trials()] == [t.params for t in straight.get_trials()]


def test_sampling_index_skips_trials_that_were_failed_and_re_queued():
    from optuna.trial import TrialState, create_trial

    from training.search.sampler import sampling_index

    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    done = lambda n, **kw: create_trial(state=TrialState.COMPLETE, value=0.5, params={"x": 0.1 * n},  # noqa: E731
                                        distributions=dist, **kw)
    trials = [done(0), create_trial(state=TrialState.FAIL, params={"x": 0.1}, distributions=dist),
              done(1, system_attrs={"failed_trial": 1}), create_trial(state=TrialState.FAIL, user_attrs={"void": True}),
              done(3), create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions=dist)]  # failed, not re-queued
    for i, t in enumerate(trials):
        t.number = i
    assert [sampling_index(trials, n) for n in range(7)] == [0, 1, 1, 2, 2, 3, 4]
