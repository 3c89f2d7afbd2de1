"""Bin occupancy of the explored configurations: per parameter, and jointly for important pairs.

The state is a pure function of the study's trials (read from the shared storage every time),
so it is identical in every worker and survives any resume; snapshots are written to the
study/trial user attributes and MLflow only as a record, never read back as the source of truth.

Axis bins: one per value for small discrete axes (categoricals, short int ranges), otherwise
``bins`` equal-width bins of the unit coordinate (log scale where the parameter is). A pair's
bins are the product of its two axes. Bins that no feasible structure can reach at this budget
(e.g. 6 layers x 8 heads at 20K parameters) are excluded from the denominator, so the target
stays reachable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from common.errors import TierHpoError
from training.search.feasibility import Feasibility
from training.search.space import SearchSpace

# Trials whose configuration was actually evaluated (pruned ones too: they explored the point).
EXPLORED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class CoverageConfig:
    """``hpo.coverage`` in params.yaml."""

    bins: int = 5
    target: float = 0.8  # steer while the mean coverage over all axes and pairs is below this
    pairs: list[list[str]] = field(default_factory=list)
    candidates: int = 8  # TPE proposals drawn per trial while steering; the one filling most empty bins wins

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise TierHpoError(f"hpo.coverage.bins must be >= 2, got {self.bins}")
        if not 0.0 <= self.target <= 1.0:
            raise TierHpoError(f"hpo.coverage.target must be in [0, 1], got {self.target}")
        if self.candidates < 1:
            raise TierHpoError(f"hpo.coverage.candidates must be >= 1, got {self.candidates}")
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise TierHpoError(f"hpo.coverage.pairs: each pair names two different parameters, got {pair}")


@dataclass(frozen=True)
class Axis:
    name: str  # "lr" or "lr.batch_size"
    params: tuple[str, ...]
    shape: tuple[int, ...]
    reachable: frozenset[tuple[int, ...]]


@dataclass(frozen=True)
class Coverage:
    """Occupied bins per axis for a set of explored configurations."""

    axes: tuple[Axis, ...]
    occupied: dict[str, frozenset[tuple[int, ...]]]
    n_points: int

    def fraction(self, axis: Axis) -> float:
        return len(self.occupied[axis.name] & axis.reachable) / len(axis.reachable)

    @property
    def overall(self) -> float:
        """Mean coverage over every axis and pair (each counts once)."""
        return float(np.mean([self.fraction(a) for a in self.axes]))

    def empty(self, axis: Axis) -> list[tuple[int, ...]]:
        return sorted(axis.reachable - self.occupied[axis.name])

    def metrics(self) -> dict[str, float]:
        out = {"coverage/overall": self.overall}
        out.update({f"coverage/{a.name}": self.fraction(a) for a in self.axes})
        return out

    def to_markdown(self) -> str:
        """The coverage table (one row per axis) for the study's parent run."""
        lines = [f"Coverage over {self.n_points} explored configurations: overall {self.overall:.3f}", "",
                 "| axis | params | bins | reachable | occupied | fraction |",
                 "|---|---|---|---|---|---|"]
        for a in self.axes:
            occupied = len(self.occupied[a.name] & a.reachable)
            lines.append(f"| {a.name} | {', '.join(a.params)} | {' x '.join(map(str, a.shape))} | "
                         f"{len(a.reachable)} | {occupied} | {self.fraction(a):.3f} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "n_points": self.n_points,
            "axes": {
                a.name: {
                    "params": list(a.params),
                    "shape": list(a.shape),
                    "fraction": self.fraction(a),
                    "n_reachable": len(a.reachable),
                    "occupied": sorted(list(b) for b in self.occupied[a.name]),
                    "empty": [list(b) for b in self.empty(a)],
                }
                for a in self.axes
            },
        }


class CoverageTracker:
    """Maps configurations to bins and computes :class:`Coverage` from a study's trials."""

    def __init__(
        self,
        space: SearchSpace,
        bins: int = 5,
        pairs: Sequence[Sequence[str]] = (),
        feasibility: Feasibility | None = None,
    ) -> None:
        self.space, self.bins = space, bins
        feasibility = feasibility or Feasibility.unconstrained()
        axes = []
        for p in space.varying():
            reach = feasibility.reachable(space, (p.name,), bins)
            shape = (p.n_bins(bins),)
            axes.append(Axis(p.name, (p.name,), shape, frozenset(reach or np.ndindex(*shape))))
        for pair in pairs:
            for name in pair:
                if name not in space:
                    raise TierHpoError(f"hpo.coverage.pairs names '{name}', which is not in hpo.space")
            a, b = (space[n] for n in pair)
            if a.distribution().single() or b.distribution().single():
                continue  # a constant axis adds nothing to a pair
            shape = (a.n_bins(bins), b.n_bins(bins))
            reach = feasibility.reachable(space, tuple(pair), bins)
            axes.append(Axis(f"{pair[0]}.{pair[1]}", tuple(pair), shape, frozenset(reach or np.ndindex(*shape))))
        self.axes = tuple(axes)

    def bins_of(self, params: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return {
            a.name: tuple(self.space[n].bin_of(params[n], self.bins) for n in a.params) for a in self.axes
        }

    def coverage(self, points: Iterable[Mapping[str, Any]]) -> Coverage:
        occupied: dict[str, set[tuple[int, ...]]] = {a.name: set() for a in self.axes}
        n = 0
        for params in points:
            if not all(name in params for name in self.space.names):
                continue  # a trial that failed before all its parameters were drawn
            n += 1
            for name, b in self.bins_of(params).items():
                occupied[name].add(b)
        return Coverage(self.axes, {k: frozenset(v) for k, v in occupied.items()}, n)

    def from_trials(self, trials: Iterable[optuna.trial.FrozenTrial]) -> Coverage:
        return self.coverage(t.params for t in trials if t.state in EXPLORED_STATES)

    def gain(self, coverage: Coverage, params: Mapping[str, Any]) -> float:
        """How much ``params`` would raise coverage: the sum over axes of the fraction it adds."""
        total = 0.0
        for axis, (_, b) in zip(self.axes, self.bins_of(params).items(), strict=True):
            if b in axis.reachable and b not in coverage.occupied[axis.name]:
                total += 1.0 / len(axis.reachable)
        return total
