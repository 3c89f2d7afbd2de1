"""The search space as data: ``params.yaml`` ``hpo.space`` -> typed parameters -> Optuna distributions.

Each parameter also has a *unit* coordinate in ``[0, 1]`` (log scale where declared, choice index
for categoricals). Forced extremes, coverage bins, random candidates and "nearest feasible"
repairs all work in that coordinate, so they treat ``lr`` in 1e-5..1e-2 and ``dropout`` in
0..0.5 alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import optuna.distributions as od

from common.errors import TierHpoError

Kind = Literal["float", "int", "categorical"]


@dataclass(frozen=True)
class ParamConfig:
    """One entry of ``hpo.space`` in params.yaml."""

    type: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None  # int only; None = 1
    choices: list[Any] | None = None  # categorical only, in a meaningful order (low -> high)


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int = 1
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        where = f"hpo.space.{self.name}"
        if self.kind == "categorical":
            if not self.choices:
                raise TierHpoError(f"{where}: a categorical parameter needs a non-empty 'choices' list")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise TierHpoError(f"{where}: 'choices' has duplicates: {list(self.choices)}")
            return
        if self.low is None or self.high is None:
            raise TierHpoError(f"{where}: a {self.kind} parameter needs 'low' and 'high'")
        if not self.low <= self.high:
            raise TierHpoError(f"{where}: low {self.low} must be <= high {self.high}")
        if self.log and self.low <= 0:
            raise TierHpoError(f"{where}: a log-scale parameter needs low > 0, got {self.low}")
        if self.kind == "int":
            if int(self.low) != self.low or int(self.high) != self.high:
                raise TierHpoError(f"{where}: an int parameter needs integer low/high")
            if self.step < 1 or (self.log and self.step != 1):
                raise TierHpoError(f"{where}: step must be >= 1 (and 1 on a log scale), got {self.step}")

    @classmethod
    def from_config(cls, name: str, cfg: ParamConfig) -> Param:
        if cfg.type == "categorical":
            extra = [k for k in ("low", "high", "step") if getattr(cfg, k) is not None]
            if extra or cfg.log:
                raise TierHpoError(f"hpo.space.{name}: a categorical parameter takes only 'choices' (got {extra or ['log']})")
            choices = tuple(cfg.choices or ())
            # Numbers listed low to high: forced extremes and coverage bins read the declared order as
            # low -> high, and so do the plots that keep it (optuna-dashboard, coverage heatmaps).
            # Checked on the declaration only: a stored study's distributions are read as they are.
            numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
            if numeric and list(choices) != sorted(choices):
                raise TierHpoError(f"hpo.space.{name}: numeric 'choices' must be listed low to high: "
                                   f"{list(choices)} -> {sorted(choices)}")
            return cls(name, "categorical", choices=choices)
        if cfg.choices is not None:
            raise TierHpoError(f"hpo.space.{name}: 'choices' is for categorical parameters only")
        if cfg.step is not None and cfg.type != "int":
            raise TierHpoError(f"hpo.space.{name}: 'step' is for int parameters only")
        low, high = cfg.low, cfg.high
        if cfg.type == "int" and low is not None and high is not None:
            low, high = int(low), int(high)
        return cls(name, cfg.type, low=low, high=high, log=cfg.log, step=cfg.step or 1)

    # ------------------------------------------------------------------ Optuna view

    def distribution(self) -> od.BaseDistribution:
        if self.kind == "float":
            return od.FloatDistribution(float(self.low), float(self.high), log=self.log)
        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step)
        return od.CategoricalDistribution(list(self.choices))

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=self.step)
        return trial.suggest_categorical(self.name, list(self.choices))

    @property
    def discrete(self) -> bool:
        return self.kind != "float"

    def values(self) -> list[Any]:
        """Every value of a discrete parameter, low to high (choices in their declared order)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step))
        raise TierHpoError(f"hpo.space.{self.name}: a float parameter has no finite list of values")

    # ------------------------------------------------------------------ unit coordinate

    def to_unit(self, value: Any) -> float:
        if self.kind == "categorical":
            n = len(self.choices)
            return 0.0 if n == 1 else self._index(value) / (n - 1)
        lo, hi, v = float(self.low), float(self.high), float(value)
        if hi == lo:
            return 0.0
        if self.log:
            return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (v - lo) / (hi - lo)

    def from_unit(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        if self.kind == "categorical":
            return self.choices[int(round(u * (len(self.choices) - 1)))]
        lo, hi = float(self.low), float(self.high)
        v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if self.log else lo + u * (hi - lo)
        if self.kind == "int":
            k = round((v - lo) / self.step)
            return int(min(max(lo + k * self.step, lo), hi))
        return min(max(v, lo), hi)

    def uniform(self, rng: np.random.Generator) -> Any:
        """A draw from the same prior Optuna's RandomSampler uses (uniform in the unit coordinate;
        uniform over values for int and categorical parameters)."""
        if self.discrete:
            vals = self.values()
            return vals[int(rng.integers(len(vals)))]
        return self.from_unit(rng.random())

    def _index(self, value: Any) -> int:
        for i, choice in enumerate(self.choices):
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return i
        raise TierHpoError(f"hpo.space.{self.name}: {value!r} is not one of {list(self.choices)}")

    # ------------------------------------------------------------------ coverage bins

    def n_bins(self, bins: int) -> int:
        """Bins of this parameter's axis: one per value for small discrete axes, else ``bins``."""
        if self.discrete and len(self.values()) <= bins:
            return len(self.values())
        return bins

    def bin_of(self, value: Any, bins: int) -> int:
        n = self.n_bins(bins)
        if self.discrete and len(self.values()) <= bins:
            return self.values().index(value) if self.kind == "int" else self._index(value)
        return min(int(self.to_unit(value) * n), n - 1)

    def bin_draw(self, b: int, bins: int, rng: np.random.Generator) -> Any:
        """A value inside bin ``b`` (uniform in the unit coordinate within the bin)."""
        n = self.n_bins(bins)
        if self.discrete and len(self.values()) <= bins:
            return self.values()[b]
        for _ in range(64):  # int axes: a narrow bin may hold no integer; retry, then take the bin centre
            value = self.from_unit((b + rng.random()) / n)
            if self.bin_of(value, bins) == b:
                return value
        return self.from_unit((b + 0.5) / n)

    def restricted(self, allowed: Sequence[Any]) -> Param:
        """This parameter narrowed to ``allowed`` values (discrete parameters only)."""
        if self.kind == "categorical":
            return Param(self.name, "categorical", choices=tuple(c for c in self.choices if c in allowed))
        kept = [v for v in self.values() if v in allowed]
        return Param(self.name, "int", low=min(kept), high=max(kept), log=self.log, step=self.step)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.kind == "int":
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    _by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.params:
            raise TierHpoError("hpo.space is empty; declare at least one parameter")
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})

    @classmethod
    def from_config(cls, space: Mapping[str, ParamConfig]) -> SearchSpace:
        return cls(tuple(Param.from_config(name, cfg) for name, cfg in space.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def distributions(self) -> dict[str, od.BaseDistribution]:
        return {p.name: p.distribution() for p in self.params}

    def varying(self) -> tuple[Param, ...]:
        """Parameters with more than one possible value (the others are constants)."""
        return tuple(p for p in self.params if not p.distribution().single())

    def key(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """A hashable identity of a config: two trials are duplicates iff their keys are equal."""
        return tuple(repr(params.get(name)) for name in self.names)

    def unit(self, params: Mapping[str, Any]) -> np.ndarray:
        """(P,) unit coordinates of a config."""
        return np.array([p.to_unit(params[p.name]) for p in self.params], dtype=np.float64)

    def uniform(self, rng: np.random.Generator) -> dict[str, Any]:
        return {p.name: p.uniform(rng) for p in self.params}

    def replace(self, param: Param) -> SearchSpace:
        return SearchSpace(tuple(param if p.name == param.name else p for p in self.params))

    def to_json(self) -> dict[str, Any]:
        return {p.name: p.to_json() for p in self.params}

    def fingerprint_text(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
