"""Which architectures exist at a parameter budget, decided before any trial runs.

The budget solver returns ``None`` for a structure that no width can bring within tolerance
of the budget (e.g. 8 layers at 20K parameters). Such structures must never be trained, so:

* every discrete structural parameter (depth, heads, FFN ratio, patch length) is enumerated
  jointly and each combination is checked once (the solver counts parameters on the meta
  device, milliseconds each);
* :meth:`Feasibility.restrict` drops values that appear in no feasible combination, so the
  Optuna distributions themselves exclude them;
* joint combinations that remain infeasible (e.g. deep *and* many heads) are repaired by the
  sampler to the nearest feasible combination (:meth:`Feasibility.repair`), before training.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import TierHpoError
from training.search.space import SearchSpace


@dataclass(frozen=True)
class Feasibility:
    names: tuple[str, ...]  # the structural parameters (discrete, in the space)
    combos: tuple[tuple[Any, ...], ...]  # every feasible value tuple, in ``names`` order
    n_checked: int = 0

    @classmethod
    def unconstrained(cls) -> Feasibility:
        return cls((), ((),), 0)

    @classmethod
    def build(
        cls, space: SearchSpace, names: tuple[str, ...], check: Callable[[dict[str, Any]], bool], what: str = ""
    ) -> Feasibility:
        """Enumerate the product of the discrete values of ``names`` and keep those ``check`` accepts."""
        names = tuple(n for n in names if n in space)
        for name in names:
            if not space[name].discrete:
                raise TierHpoError(
                    f"hpo.space.{name} changes the parameter count, so it must be int or categorical "
                    f"(a finite set the budget solver can check), not a float range"
                )
        if not names:
            return cls.unconstrained()
        grid = list(itertools.product(*(space[n].values() for n in names)))
        combos = tuple(c for c in grid if check(dict(zip(names, c, strict=True))))
        if not combos:
            raise TierHpoError(
                f"no architecture in hpo.space fits {what or 'the budget'} "
                f"({len(grid)} combinations of {', '.join(names)} checked); widen the space or change the budget"
            )
        return cls(names, combos, len(grid))

    def restrict(self, space: SearchSpace) -> SearchSpace:
        """``space`` without the values of structural parameters that no feasible combination uses."""
        for i, name in enumerate(self.names):
            used = sorted({c[i] for c in self.combos}, key=space[name].values().index)
            space = space.replace(space[name].restricted(used))
        return space

    def is_feasible(self, params: Mapping[str, Any]) -> bool:
        return tuple(params[n] for n in self.names) in set(self.combos)

    def repair(self, params: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
        """``params`` with its structure moved to the nearest feasible combination (Euclidean in
        the unit coordinates of the structural parameters; ties go to the first in enumeration
        order, so the repair is deterministic)."""
        out = dict(params)
        if not self.names or self.is_feasible(params):
            return out
        grid = np.array([[space[n].to_unit(v) for n, v in zip(self.names, c, strict=True)] for c in self.combos])
        here = np.array([space[n].to_unit(params[n]) for n in self.names])
        best = self.combos[int(np.argmin(((grid - here) ** 2).sum(axis=1)))]
        out.update(zip(self.names, best, strict=True))
        return out

    def reachable(self, space: SearchSpace, names: tuple[str, ...], bins: int) -> set[tuple[int, ...]] | None:
        """Joint coverage bins of ``names`` that a feasible structure can reach, or ``None`` when
        ``names`` are not all structural (then every bin is reachable)."""
        if not names or any(n not in self.names for n in names):
            return None
        idx = [self.names.index(n) for n in names]
        return {tuple(space[n].bin_of(c[i], bins) for n, i in zip(names, idx, strict=True)) for c in self.combos}

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "n_feasible": len(self.combos), "n_checked": self.n_checked}
