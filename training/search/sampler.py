"""``CoverageSampler``: Optuna's multivariate TPE, steered into unexplored bins until coverage is reached.

Per trial (``sample_relative``, i.e. jointly for the whole space):

1. Draw candidates: TPE proposals (seeded, multivariate, Optuna 5 defaults) or, during TPE's
   random start-up phase, uniform draws. One candidate once coverage has reached the target;
   ``candidates`` of them while it is below.
2. Repair each candidate's structure to the nearest architecture that is feasible at the budget
   (:mod:`training.search.feasibility`), and drop candidates identical to a trial that already
   ran or is running (duplicates are prevented here, before any training).
3. While coverage (of explored *and* running trials, so parallel workers do not pile into the
   same bin) is below the target, keep the candidate that fills the most empty bins, TPE's own
   order breaking ties. If none fills any, move the least-covered axis of TPE's first candidate
   into one of its empty bins.

Steering happens in the sampler, never as retries in the objective. The decision for each
trial (phase ``tpe`` / ``coverage`` / ``random``, coverage before, bins gained) is kept in memory for
the objective of the same process to record; it is not needed to resume, because coverage is
recomputed from the storage.

Resume: every draw is a function of (seed, the trial's sampling index, the stored trials), never
of this object's past draws. Before each proposal the per-trial generator is
``default_rng([seed, index])`` and TPE's private RNG is reseeded from ``derived_seed(seed, index, 1)``
(:func:`reseed_for_trial`); :func:`sampling_index` discounts trials that were failed and re-queued,
so a study SIGKILLed mid-trial and resumed samples what the uninterrupted one did (single worker).
``worker_index`` no longer seeds anything: trials, hence indices, differ between workers.

The extra TPE candidates come from ``TPESampler._sample_relative`` (private): the public
``sample_relative`` also writes the proposal into the trial's system attributes for the constant
liar, once per call, which would advertise a candidate we did not pick. The chosen parameters are
suggested right away, so the liar sees them as the running trial's params instead.
``tests/test_search_sampler.py`` pins that this private method still exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from training.search.coverage import EXPLORED_STATES, CoverageTracker
from training.search.feasibility import Feasibility
from training.search.space import SearchSpace

TAKEN_STATES = (*EXPLORED_STATES, TrialState.RUNNING)
_FRESH_DRAWS = 64  # random draws tried when every candidate duplicates an existing trial


@dataclass(frozen=True)
class Decision:
    phase: str  # "tpe" | "coverage" | "random"
    coverage_before: float
    gain: float
    n_candidates: int
    steered_axis: str | None = None
    duplicate: bool = False  # no fresh config could be found (the objective records it as a duplicate)


def derived_seed(seed: int, *salt: int) -> int:
    """A 32-bit seed from ``seed`` and ``salt`` (e.g. the worker index), stable across runs."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


_BASE_SALT = 1  # the base sampler's per-trial seed is derived_seed(seed, index, _BASE_SALT)


def replaced(trial: FrozenTrial, retried: set[int]) -> bool:
    """A trial that another one replaces: failed and re-queued (a dead worker's trial, whose retry
    names it in ``failed_trial``) or given back unrun (``void``). It took a trial number but no
    sampling slot: its retry runs its parameters."""
    return trial.number in retried or bool(trial.user_attrs.get("void"))


def sampling_index(trials: Sequence[FrozenTrial], number: int) -> int:
    """The position of trial ``number`` in the study's sampling order: its number less the trials
    before it that were replaced (:func:`replaced`). An interrupted and resumed study gives each
    sampled trial the index it has in the uninterrupted one, though the re-queued trial shifts
    every later trial number by one."""
    retried = {t.system_attrs["failed_trial"] for t in trials if t.system_attrs.get("failed_trial") is not None}
    return number - sum(1 for t in trials if t.number < number and replaced(t, retried))


def reseed_for_trial(sampler: BaseSampler, seed: int) -> None:
    """Reseed an Optuna sampler's private RNGs (``TPESampler`` and its start-up ``RandomSampler``,
    or a ``RandomSampler``) so its next draws depend on ``seed`` alone, not on how many draws this
    sampler object made before (a resumed process starts with a fresh one)."""
    for s in (sampler, getattr(sampler, "_random_sampler", None)):
        lazy = getattr(s, "_rng", None)
        if lazy is not None and hasattr(lazy, "rng"):
            lazy._rng = np.random.RandomState(seed)


class _PerTrialSeed:
    """Mixin for the plain Optuna samplers (``hpo.sampler: tpe | random``): reseeded before each trial
    from the study seed and the trial's sampling index, like ``CoverageSampler``."""

    study_seed: int

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        index = sampling_index(study.get_trials(deepcopy=False), trial.number)
        reseed_for_trial(self, derived_seed(self.study_seed, index, _BASE_SALT))  # type: ignore[arg-type]
        super().before_trial(study, trial)  # type: ignore[misc]


class SeededTPESampler(_PerTrialSeed, TPESampler):
    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.study_seed = seed


class SeededRandomSampler(_PerTrialSeed, optuna.samplers.RandomSampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self.study_seed = seed


class CoverageSampler(BaseSampler):
    def __init__(
        self,
        space: SearchSpace,
        tracker: CoverageTracker,
        *,
        seed: int = 0,
        target: float = 0.8,
        candidates: int = 8,
        feasibility: Feasibility | None = None,
        steer: bool = True,
        worker_index: int = 0,
        base: BaseSampler | None = None,
    ) -> None:
        self.space, self.tracker = space, tracker
        self.seed, self.target, self.candidates, self.steer = seed, target, candidates, steer
        self.feasibility = feasibility or Feasibility.unconstrained()
        self._base = base or TPESampler(seed=derived_seed(seed, worker_index))
        self._constants = {p.name: p.values()[0] if p.discrete else p.low for p in space.params
                           if p.distribution().single()}
        self._decisions: dict[int, Decision] = {}

    # ------------------------------------------------------------------ BaseSampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution() for p in self.space.varying()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}  # an enqueued trial (forced extreme or retry): Optuna uses its fixed params
        chosen, decision = self._choose(study, trial, search_space)
        self._decisions[trial.number] = decision
        return {name: chosen[name] for name in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._base.reseed_rng()

    # ------------------------------------------------------------------ decisions

    def decision(self, number: int) -> Decision | None:
        """The decision made for trial ``number`` in this process (``None`` for enqueued trials)."""
        return self._decisions.pop(number, None)

    def _proposal(self, study: optuna.Study, trial: FrozenTrial, space: dict[str, BaseDistribution],
                  rng: np.random.Generator) -> tuple[dict[str, Any], str]:
        proposal = {}
        if isinstance(self._base, TPESampler):
            proposal = self._base._sample_relative(study, trial, space)
        elif hasattr(self._base, "sample_relative"):
            proposal = self._base.sample_relative(study, trial, space)
        if proposal:
            return self._complete(proposal, rng), "tpe"
        return self._complete({}, rng), "random"  # TPE's start-up phase: a uniform draw

    def _complete(self, partial: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        params = {**self._constants, **partial}
        for p in self.space.params:
            if p.name not in params:
                params[p.name] = p.uniform(rng)
        return self.feasibility.repair(params, self.space)

    def _choose(self, study: optuna.Study, trial: FrozenTrial, space: dict[str, BaseDistribution]
                ) -> tuple[dict[str, Any], Decision]:
        # Every draw is a function of (seed, sampling index, stored history), never of this object's
        # past draws or of the trial number, so a resumed study samples what the uninterrupted one did.
        trials = study.get_trials(deepcopy=False)
        index = sampling_index(trials, trial.number)
        rng = np.random.default_rng([self.seed, index])
        reseed_for_trial(self._base, derived_seed(self.seed, index, _BASE_SALT))
        others = [t for t in trials if t.state in TAKEN_STATES and t.number != trial.number]
        taken = {self.space.key(t.params) for t in others}
        coverage = self.tracker.coverage(t.params for t in others)
        steering = self.steer and coverage.overall < self.target
        n = self.candidates if steering else 1
        cands, source = [], "random"
        for _ in range(n):
            cand, source = self._proposal(study, trial, space, rng)
            cands.append(cand)
        fresh = _unique(self.space, [c for c in cands if self.space.key(c) not in taken])
        if not fresh:
            for _ in range(_FRESH_DRAWS):
                cand = self._complete({}, rng)
                if self.space.key(cand) not in taken:
                    fresh = [cand]
                    break
        if not fresh:  # the space is exhausted: give the first candidate, the objective records the duplicate
            return cands[0], Decision(source, coverage.overall, 0.0, len(cands), duplicate=True)
        if not steering:
            return fresh[0], Decision(source, coverage.overall, self.tracker.gain(coverage, fresh[0]), len(cands))
        gains = [self.tracker.gain(coverage, c) for c in fresh]
        best = int(np.argmax(gains))  # first maximum = TPE's earliest proposal among the best
        if gains[best] > 0:
            phase = "coverage" if best > 0 or source == "random" else source
            return fresh[best], Decision(phase, coverage.overall, gains[best], len(cands))
        moved, axis = self._move_to_empty_bin(fresh[0], coverage, rng)
        if moved is not None and self.space.key(moved) not in taken:
            return moved, Decision("coverage", coverage.overall, self.tracker.gain(coverage, moved), len(cands), axis)
        return fresh[0], Decision(source, coverage.overall, 0.0, len(cands))

    def _move_to_empty_bin(self, params: dict[str, Any], coverage: Any, rng: np.random.Generator
                           ) -> tuple[dict[str, Any] | None, str | None]:
        open_axes = [a for a in self.tracker.axes if coverage.empty(a)]
        if not open_axes:
            return None, None
        axis = min(open_axes, key=coverage.fraction)
        empty = coverage.empty(axis)
        target_bin = empty[int(rng.integers(len(empty)))]
        moved = dict(params)
        for name, b in zip(axis.params, target_bin, strict=True):
            moved[name] = self.space[name].bin_draw(b, self.tracker.bins, rng)
        return self.feasibility.repair(moved, self.space), axis.name


def _unique(space: SearchSpace, cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for c in cands:
        if space.key(c) not in seen:
            seen.add(space.key(c))
            out.append(c)
    return out
