"""Parameter budgets: ``"20M"`` means a network whose *real* parameter count is 20M +/- 10 %.

The search samples a structure (:class:`Architecture`: depth, heads, FFN ratio, patch length);
:func:`solve` picks the width ``d_model`` (a multiple of ``n_heads``) that lands the real count,
``sum(p.numel())`` of the built network, inside the tolerance. Structures for which no width
works are infeasible (``None``) and are excluded from the search space before any training.
Networks are built on the meta device, so counting a 200M model costs milliseconds and no memory.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from common.errors import TierHpoError
from training.model import ModelConfig, build_on_meta, count_parameters

MAX_TOLERANCE = 0.10
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGB]?)\s*$", re.IGNORECASE)


def parse_budget(text: str | int) -> int:
    """``"20M" -> 20_000_000``; also ``"200K"``, ``"2.5M"``, ``"1B"`` and plain integers."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _BUDGET_RE.match(str(text))
        if not match:
            raise TierHpoError(f"invalid budget {text!r}: write a parameter count such as 200K, 2M or 2.5M")
        value = round(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value < 1:
        raise TierHpoError(f"invalid budget {text!r}: the parameter count must be positive")
    return value


def format_budget(n: int) -> str:
    """The shortest canonical spelling: ``20_000_000 -> "20M"``, ``2_500_000 -> "2.5M"``, ``1234 -> "1234"``.

    Round-trips: ``parse_budget(format_budget(n)) == n``.
    """
    for suffix in ("B", "M", "K"):
        unit = _UNITS[suffix]
        if n >= unit:
            text = f"{n / unit:.3g}{suffix}"  # at most 3 significant digits, else spell it out
            if "e" not in text and parse_budget(text) == n:
                return text
    return str(n)


@dataclass(frozen=True)
class Architecture:
    """The searched structure of a network; the width is solved, never searched."""

    n_layers: int
    n_heads: int
    d_ff_ratio: float
    patch_len: int
    stride: int = 0  # 0 = patch_len
    channel_independent: bool = False
    norm: Literal["global", "revin"] = "global"
    pooling: Literal["last", "mean"] = "last"

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "patch_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TierHpoError(f"architecture {name} must be a positive integer, got {value!r}")
        if not self.d_ff_ratio > 0:
            raise TierHpoError(f"architecture d_ff_ratio must be > 0, got {self.d_ff_ratio}")

    @classmethod
    def of(cls, cfg: ModelConfig, d_ff_ratio: float | None = None) -> Architecture:
        """The structure of a solved config (to re-solve it at another budget); every structural
        field is kept. ``d_ff_ratio`` defaults to ``cfg.d_ff / cfg.d_model``; pass the sampled one."""
        return cls(n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                   d_ff_ratio=d_ff_ratio if d_ff_ratio is not None else cfg.d_ff / cfg.d_model,
                   patch_len=cfg.patch_len, stride=cfg.stride, channel_independent=cfg.channel_independent,
                   norm=cfg.norm, pooling=cfg.pooling)


def model_config(
    arch: Architecture, d_model: int, n_features: int, context_len: int, dropout: float = 0.1
) -> ModelConfig:
    """The full config of ``arch`` at width ``d_model`` (``d_ff = round(d_ff_ratio * d_model)``)."""
    return ModelConfig(
        n_features=n_features,
        context_len=context_len,
        patch_len=arch.patch_len,
        stride=arch.stride,
        d_model=d_model,
        n_layers=arch.n_layers,
        n_heads=arch.n_heads,
        d_ff=max(1, round(arch.d_ff_ratio * d_model)),
        dropout=dropout,
        channel_independent=arch.channel_independent,
        norm=arch.norm,
        pooling=arch.pooling,
    )


def count_params(cfg: ModelConfig) -> int:
    """Real parameter count of the network ``cfg`` describes (built on the meta device)."""
    return count_parameters(build_on_meta(cfg))


def solve(
    arch: Architecture,
    budget: int | str,
    n_features: int,
    context_len: int,
    *,
    dropout: float = 0.1,
    tolerance: float = MAX_TOLERANCE,
    min_head_dim: int = 4,
) -> ModelConfig | None:
    """The config of ``arch`` whose real parameter count is closest to ``budget``, if within
    ``tolerance`` (relative); ``None`` if no width ``d_model = k * n_heads`` (``k >= min_head_dim``)
    gets there, i.e. the architecture is infeasible at this budget."""
    if not 0 < tolerance <= MAX_TOLERANCE:
        raise TierHpoError(f"budget tolerance must be in (0, {MAX_TOLERANCE}], got {tolerance}")
    if min_head_dim < 1:
        raise TierHpoError(f"min_head_dim must be >= 1, got {min_head_dim}")
    solved = _solve_width(arch, parse_budget(budget), n_features, context_len, tolerance, min_head_dim)
    if solved is None:
        return None
    return dataclasses.replace(solved, dropout=dropout)


@lru_cache(maxsize=4096)
def _solve_width(
    arch: Architecture, budget: int, n_features: int, context_len: int, tolerance: float, min_head_dim: int
) -> ModelConfig | None:
    if arch.patch_len > context_len:
        return None
    heads = arch.n_heads

    def config(k: int, n_layers: int | None = None) -> ModelConfig:  # width d_model = k * heads
        cfg = model_config(arch, k * heads, n_features, context_len)
        return cfg if n_layers is None else dataclasses.replace(cfg, n_layers=n_layers)

    # The count is E(d) + n_layers * T(d), both quadratic in the width d (up to the rounding of
    # d_ff). Fit them exactly from real counts of cheap 1- and 2-layer networks at three widths,
    # solve for the budget, then pick the width by the *real* count of the full network.
    ks = (min_head_dim, 2 * min_head_dim, 4 * min_head_dim)
    widths = [k * heads for k in ks]
    one = [count_params(config(k, 1)) for k in ks]
    per_layer = [count_params(config(k, 2)) - p for k, p in zip(ks, one, strict=True)]
    totals = [p + (arch.n_layers - 1) * t for p, t in zip(one, per_layer, strict=True)]
    a, b, c = _quadratic_through(widths, totals)
    disc = b * b - 4 * a * (c - budget)
    d_star = (-b + math.sqrt(disc)) / (2 * a) if a > 0 and disc >= 0 else widths[0]
    k_star = max(min_head_dim, math.floor(d_star / heads))
    predicted = {k: a * (k * heads) ** 2 + b * k * heads + c for k in (k_star, k_star + 1)}
    k_best = min(predicted, key=lambda k: abs(predicted[k] - budget))
    # Verify with real counts, walking to a neighbour only if the fit was off (d_ff rounding).
    real = {k_best: count_params(config(k_best))}
    if abs(real[k_best] - budget) > tolerance * budget:
        for k in (k_best - 1, k_best + 1):
            if k >= min_head_dim:
                real[k] = count_params(config(k))
        k_best = min(real, key=lambda k: abs(real[k] - budget))
        if abs(real[k_best] - budget) > tolerance * budget:
            return None
    return config(k_best)


def _quadratic_through(xs: list[int], ys: list[int]) -> tuple[float, float, float]:
    """Coefficients ``(a, b, c)`` of the parabola through three points (Newton's divided differences)."""
    (x1, x2, x3), (y1, y2, y3) = xs, ys
    a = ((y3 - y1) / (x3 - x1) - (y2 - y1) / (x2 - x1)) / (x3 - x2)
    b = (y2 - y1) / (x2 - x1) - a * (x1 + x2)
    return a, b, y1 - a * x1 * x1 - b * x1


@dataclass(frozen=True)
class ModelParams:
    """``params.yaml`` section ``model``: structure defaults and the solver's rules.

    The HPO search space may override any of ``n_layers, n_heads, d_ff_ratio, patch_len,
    dropout``; whatever it does not search comes from here.
    """

    n_layers: int = 2
    n_heads: int = 4
    d_ff_ratio: float = 2.0
    patch_len: int = 4
    stride: int = 0
    dropout: float = 0.1
    channel_independent: bool = False
    norm: Literal["global", "revin"] = "global"
    pooling: Literal["last", "mean"] = "last"
    budget_tolerance: float = MAX_TOLERANCE
    min_head_dim: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.budget_tolerance <= MAX_TOLERANCE:
            raise TierHpoError(f"model.budget_tolerance must be in (0, {MAX_TOLERANCE}], got {self.budget_tolerance}")
        if self.min_head_dim < 1:
            raise TierHpoError(f"model.min_head_dim must be >= 1, got {self.min_head_dim}")
        self.architecture()  # validates the structure fields

    _SEARCHABLE = ("n_layers", "n_heads", "d_ff_ratio", "patch_len", "stride", "dropout")

    def architecture(self, **searched: Any) -> Architecture:
        """This section's structure with the sampled values in ``searched`` applied."""
        unknown = sorted(set(searched) - set(self._SEARCHABLE))
        if unknown:
            raise TierHpoError(f"not an architecture parameter: {unknown}; known: {list(self._SEARCHABLE)}")
        values = {**dataclasses.asdict(self), **searched}
        return Architecture(
            n_layers=values["n_layers"],
            n_heads=values["n_heads"],
            d_ff_ratio=values["d_ff_ratio"],
            patch_len=values["patch_len"],
            stride=values["stride"],
            channel_independent=self.channel_independent,
            norm=self.norm,
            pooling=self.pooling,
        )

    def solve(self, budget: int | str, n_features: int, context_len: int, **searched: Any) -> ModelConfig | None:
        """:func:`solve` for this section's structure with ``searched`` overrides (see :meth:`architecture`)."""
        dropout = searched.get("dropout", self.dropout)
        return solve(
            self.architecture(**searched), budget, n_features, context_len,
            dropout=dropout, tolerance=self.budget_tolerance, min_head_dim=self.min_head_dim,
        )
