"""The select stage's record, ``results/select/h<h>/verdicts.json``: one typed contract, one reader.

Writer: the ``select@h`` stage (helper H). Reader: the report. Every interval in it was computed
by ``evaluation.seed_bootstrap.Comparison`` (two-level bootstrap over seeds and day blocks, the
same test days for every model) and carries the adjustment its reading used, so the report
prints intervals and readings from one number, never recomputing either.

Schema (JSON object):

* ``horizon``, ``symbol``, ``alpha``, ``adjustment`` (``"holm"`` | ``"none"``), ``block_length``,
  ``n_test_days``, ``n_seeds``;
* ``base_rates``: ``{"train", "val", "test"}`` positive share per split;
* ``tiers``, ``budgets``: the grid's axes in order (budgets by parameter count);
* ``cells``: ``[{tier, budget, n_params, val_auc, seed_sd_val, test: Interval, in_mcs}]``;
* ``baselines``: ``{name: {val_auc, test: Interval}}`` for ``vol``, ``logreg``, ``hgb``;
* ``best``: ``{tier, budget}``: the candidate, best on VALIDATION;
* ``vs_baselines``: ``[{baseline, test, diff: Interval (best minus baseline; p_value, p_adjusted)}]``;
* ``budget_verdicts``: ``{tier: {verdict, evidence}}``; ``tier_verdicts``: ``{budget: {verdict, evidence}}``;
* ``mcs``: ``{alpha, members: ["<tier>/<budget>", ...]}``;
* ``gate``: ``{passed, reason, spa_p, baseline}``;
* ``trial_spread_val``: ``{"<tier>/<budget>": sd of the top-5 trials' val AUC}``.

``Interval``: ``{estimate, low, high}`` plus, for differences, ``p_value`` and ``p_adjusted``, and for
a Holm family ``level``, the coverage its Holm step tests it at (so the interval excludes 0 when the
adjusted p is below alpha: ``Comparison.holm_family``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import atomic
from common.errors import TierHpoError

FILE = "verdicts.json"
BUDGET_WORDS = ("monotonic", "violated", "inconclusive")
TIER_WORDS = ("more features help", "more features hurt", "inconclusive")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    p_value: float | None = None
    p_adjusted: float | None = None
    level: float | None = None  # coverage of [low, high] when not 1 - alpha: the Holm step that decides it


@dataclass(frozen=True)
class Cell:
    tier: str
    budget: str
    n_params: int
    val_auc: float
    test: Interval
    in_mcs: bool
    seed_sd_val: float | None = None

    @property
    def key(self) -> str:
        return f"{self.tier}/{self.budget}"


@dataclass(frozen=True)
class BaselineCell:
    val_auc: float | None
    test: Interval


@dataclass(frozen=True)
class VsBaseline:
    baseline: str
    test: str  # the test's name, e.g. "two-level bootstrap, paired AUC difference"
    diff: Interval


@dataclass(frozen=True)
class Verdict:
    verdict: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str
    spa_p: float | None
    baseline: str


@dataclass(frozen=True)
class SelectionRecord:
    horizon: int
    symbol: str
    alpha: float
    adjustment: str
    block_length: float
    n_test_days: int
    n_seeds: int
    base_rates: dict[str, float]
    tiers: list[str]
    budgets: list[str]
    cells: list[Cell]
    baselines: dict[str, BaselineCell]
    best: dict[str, str]
    vs_baselines: list[VsBaseline]
    budget_verdicts: dict[str, Verdict]
    tier_verdicts: dict[str, Verdict]
    mcs: dict[str, Any]
    gate: Gate
    trial_spread_val: dict[str, float] = field(default_factory=dict)

    def cell(self, tier: str, budget: str) -> Cell | None:
        return next((c for c in self.cells if c.tier == tier and c.budget == budget), None)

    @property
    def best_cell(self) -> Cell:
        found = self.cell(self.best["tier"], self.best["budget"])
        assert found is not None
        return found

    def write(self, directory: Path) -> Path:
        return atomic.write_json(Path(directory) / FILE, asdict(self))

    @classmethod
    def read(cls, directory: Path) -> SelectionRecord:
        path = Path(directory) / FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise TierHpoError(f"no selection record at {path}; run `tierhpo select` (or `dvc repro`) first") from None
        except json.JSONDecodeError as exc:
            raise TierHpoError(f"{path} is not valid JSON ({exc.msg}); rerun `tierhpo select`") from None
        try:
            return cls.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise TierHpoError(f"{path} does not follow the selection contract ({type(exc).__name__}: {exc}); "
                               "rerun `tierhpo select`") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SelectionRecord:
        cells = [Cell(**{**c, "test": Interval(**c["test"])}) for c in raw["cells"]]
        rec = cls(
            horizon=int(raw["horizon"]), symbol=str(raw["symbol"]), alpha=float(raw["alpha"]),
            adjustment=str(raw["adjustment"]), block_length=float(raw["block_length"]),
            n_test_days=int(raw["n_test_days"]), n_seeds=int(raw["n_seeds"]),
            base_rates={k: float(v) for k, v in raw["base_rates"].items()},
            tiers=list(raw["tiers"]), budgets=list(raw["budgets"]), cells=cells,
            baselines={k: BaselineCell(v.get("val_auc"), Interval(**v["test"])) for k, v in raw["baselines"].items()},
            best=dict(raw["best"]),
            vs_baselines=[VsBaseline(v["baseline"], v["test"], Interval(**v["diff"])) for v in raw["vs_baselines"]],
            budget_verdicts={k: Verdict(**v) for k, v in raw["budget_verdicts"].items()},
            tier_verdicts={k: Verdict(**v) for k, v in raw["tier_verdicts"].items()},
            mcs=dict(raw["mcs"]), gate=Gate(**raw["gate"]),
            trial_spread_val={k: float(v) for k, v in (raw.get("trial_spread_val") or {}).items()},
        )
        for v in rec.budget_verdicts.values():
            if v.verdict not in BUDGET_WORDS:
                raise ValueError(f"budget verdict {v.verdict!r} not in {BUDGET_WORDS}")
        for v in rec.tier_verdicts.values():
            if v.verdict not in TIER_WORDS:
                raise ValueError(f"tier verdict {v.verdict!r} not in {TIER_WORDS}")
        if rec.cell(rec.best["tier"], rec.best["budget"]) is None:
            raise ValueError(f"best {rec.best} is not one of the cells")
        return rec
