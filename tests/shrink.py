"""The one shrink fixture: the real ``params.yaml``, test-sized. Every test that needs a config starts here.

``shrink()`` is this repo's params.yaml with :data:`TINY_PROFILE` applied (1-2 epochs, 2-3 trials,
tiny budgets); ``shrink(params)`` shrinks another parsed params.yaml (a repo copy's);
``shrink(data={...}, hpo={...})`` then changes single keys of those sections, as a test needs;
``train_config(**keys)`` is the shrunk ``train`` section as the typed config the trainer takes.
Every key named must exist in params.yaml, so a typo or a renamed key fails here exactly as in a
real run. Importable as ``shrink`` (tests/ is on the path under pytest) and as ``tests.shrink``
(the subprocesses of the crash tests).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

# Every key kept, only sizes changed.
TINY_PROFILE: dict[str, dict] = {
    "data": {"tiers": ["a20", "a50"], "horizons": [1]},
    "train": {"max_epochs": 2, "patience": 1},
    "hpo": {"tiers": ["a20", "a50"], "budgets": ["20K", "40K"], "horizons": [1], "trials": 3, "forced": 2,
            "threads": 2, "refit_seeds": 2},
    "cross_budget": {"seeds": 2},
    "cross_tier": {"seeds": 2},
    "report": {"tiers": [], "bootstrap_reps": 300},
    "select": {"bootstrap_reps": 200, "mcs_reps": 100, "spa_reps": 100},
}


def shrink(params: dict[str, Any] | None = None, **overrides: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a parsed params.yaml; default: this repo's) with the tiny profile applied, then
    ``overrides`` (section -> the keys to change); a new copy, ``params`` is left as it was."""
    out = copy.deepcopy(params if params is not None else yaml.safe_load(PARAMS.read_text()))
    for changes in (TINY_PROFILE, overrides):
        for section, values in changes.items():
            unknown = set(values) - set(out[section])
            assert not unknown, f"the shrink names keys params.yaml lacks: {section}.{sorted(unknown)}"
            out[section].update(copy.deepcopy(values))
    return out


def train_config(**keys: Any) -> Any:
    """The shrunk ``train`` section with ``keys`` changed, built into ``training.trainer.TrainConfig``
    (validated on load, as ``tierhpo`` does)."""
    from common import config
    from training.trainer import TrainConfig

    return config.build(TrainConfig, shrink(train=keys)["train"], where="train")
