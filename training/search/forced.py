"""Phase 1: forced extremes, a deliberate spread of corners of the space, run before TPE.

The corners come from a two-level orthogonal design (the rows of a Sylvester-Hadamard matrix,
``scipy.linalg.hadamard``) over the searched parameters, in complementary pairs:
all-low, all-high, then row/anti-row pairs in which every parameter is low in one and high in
the other, and every two parameters are balanced (each of the four low/high combinations equally
often over the design). So six trials already contrast every parameter and every pair, which a
random start cannot promise. Discrete parameters (depth, heads, choices) take their end
values; continuous ones sit ``inset`` inside their range in the unit coordinate (log scale where
declared), since the literal bounds (e.g. lr = 1e-2) mostly buy a divergent trial, not information.
If more points are asked for than the design has, "edges" follow: the centre with one parameter
at an end. Every point is repaired to a feasible architecture, duplicates are dropped.

Enqueuing is idempotent: each point carries ``forced_index`` in its user attributes, and a point
is enqueued only if no trial of the study (in any state) has that index yet, so resumes and
extra workers never duplicate it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from scipy.linalg import hadamard

from training.search.feasibility import Feasibility
from training.search.space import Param, SearchSpace

PHASE_FORCED = "forced"


def _level(p: Param, high: bool, inset: float) -> Any:
    if p.discrete:
        values = p.values()
        return values[-1] if high else values[0]
    return p.from_unit(1.0 - inset if high else inset)


def _centre(p: Param) -> Any:
    if p.discrete:
        values = p.values()
        return values[(len(values) - 1) // 2]
    return p.from_unit(0.5)


def _design(k: int) -> list[np.ndarray]:
    """Sign rows (+1 high / -1 low) over ``k`` parameters, in the order they are used."""
    m = 1 << max(1, math.ceil(math.log2(k + 1)))
    h = hadamard(m)[:, 1 : k + 1]  # drop the all-ones column: every remaining column is balanced
    rows: list[np.ndarray] = [-h[0], h[0]]  # h[0] restricted to the columns is all +1
    for r in h[1:]:
        rows += [r, -r]
    return rows


def forced_configs(
    space: SearchSpace, n: int, inset: float = 0.1, feasibility: Feasibility | None = None
) -> list[dict[str, Any]]:
    """``n`` distinct, feasible corner/edge configurations of ``space``, in run order."""
    feasibility = feasibility or Feasibility.unconstrained()
    varying = space.varying()
    constants = {p.name: _centre(p) for p in space.params if p not in varying}
    points = []
    for signs in _design(len(varying)):
        points.append({**constants, **{p.name: _level(p, s > 0, inset) for p, s in zip(varying, signs, strict=True)}})
    centre = {**constants, **{p.name: _centre(p) for p in varying}}
    points.append(centre)
    for p in varying:
        for high in (False, True):
            points.append({**centre, p.name: _level(p, high, inset)})
    out, seen = [], set()
    for point in points:
        point = feasibility.repair(point, space)
        key = space.key(point)
        if key not in seen:
            seen.add(key)
            out.append(point)
        if len(out) == n:
            break
    return out


def enqueue_forced(study: optuna.Study, configs: list[dict[str, Any]]) -> list[int]:
    """Enqueue the forced points the study does not have yet; returns the indices enqueued."""
    present = {t.user_attrs.get("forced_index") for t in study.get_trials(deepcopy=False)}
    added = []
    for i, params in enumerate(configs):
        if i not in present:
            study.enqueue_trial(params, user_attrs={"phase": PHASE_FORCED, "forced_index": i})
            added.append(i)
    return added
