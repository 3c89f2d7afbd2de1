"""A finished HPO study as its ``best.json`` describes it: the contract's reader, for every stage after HPO.

Writer: ``training/search/results.py`` (``tierhpo hpo``), into ``paths.study_dir(tier, budget, h)``:
``best.json`` (the keys in ``BEST_KEYS``), ``model.pt`` (the best trial's weights), ``trials.csv`` and
the refit files (``refit.json`` through ``Study.refit_record``). Readers: cross-budget, cross-tier,
promote and select, through ``read_study`` here, so a missing or foreign file is the same one-line
error everywhere, and no stage borrows from another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import config, paths
from common.errors import TierHpoError

METRIC = "val/auc"


@dataclass(frozen=True)
class Study:
    """One finished HPO study as ``best.json`` describes it (see docs/architecture.md)."""

    tier: str
    budget: str
    horizon: int
    directory: Path
    best: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        """What is promoted and served: the seed ensemble (``refit.pt``) when the study has one, else
        the search's best trial (``model.pt``)."""
        refit = self.directory / "refit.pt"
        return refit if refit.is_file() and (self.directory / "refit.json").is_file() else self.directory / "model.pt"

    @property
    def is_ensemble(self) -> bool:
        return self.weights_path.name == "refit.pt"

    def members(self) -> list[tuple[dict[str, Any], float | None]]:
        """``[(state_dict, recorded val/auc)]``: each refit seed, or the one best-trial model."""
        import torch

        if not self.is_ensemble:
            return [(self.state_dict(), self.val_auc)]
        refit = self.refit_record() or {}
        states = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        recorded = {int(m["seed"]): m.get(METRIC) for m in refit.get("members", [])}
        try:
            return [(states[f"seed_{s}"], recorded.get(int(s))) for s in refit["seeds"]]
        except KeyError as exc:
            raise TierHpoError(f"{self.weights_path} lacks {exc} of refit.json; rerun: tierhpo hpo --tier {self.tier} "
                               f"--budget {self.budget} --horizon {self.horizon}") from None

    def refit_record(self) -> dict[str, Any] | None:
        """``refit.json`` (the best configuration retrained with fresh seeds), None without one."""
        path = self.directory / "refit.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TierHpoError(f"{path} is not valid JSON ({exc.msg}); rerun: tierhpo hpo --tier {self.tier} "
                               f"--budget {self.budget} --horizon {self.horizon}") from exc

    def model_config(self):
        """The network structure (the refit seeds share the best trial's)."""
        from training.model import ModelConfig

        return ModelConfig.from_dict(self.best["model_config"])

    @property
    def raw_version(self) -> str | None:
        """The ``data.dvc`` hash of the raw data the study ran on (``data_version`` in a ``best.json``
        written before the rename to ``raw_version``)."""
        return self.best.get("raw_version", self.best.get("data_version"))

    @property
    def val_auc(self) -> float:
        return float(self.best["metrics"][METRIC])

    def train_config(self):
        from training.trainer import TrainConfig

        return TrainConfig.from_dict(self.best["train_config"])

    def state_dict(self) -> dict[str, Any]:
        import torch

        if not self.weights_path.is_file():
            raise TierHpoError(f"{self.weights_path} is missing; rerun: tierhpo hpo --tier {self.tier} "
                               f"--budget {self.budget} --horizon {self.horizon}")
        return torch.load(self.weights_path, map_location="cpu", weights_only=True)


BEST_KEYS = ("study_name", "trial_number", "mlflow_run_id", "experiment_id", "params", "model_config",
              "train_config", "n_params", "metrics")


def read_study(tier: str, budget: str, horizon: int) -> Study:
    """The study of ``(tier, budget, horizon)``; a missing or incomplete ``best.json`` is a one-line error."""
    directory = paths.study_dir(tier, budget, horizon)
    path = directory / "best.json"
    hint = f"run: tierhpo hpo --tier {tier} --budget {budget} --horizon {horizon}"
    if not path.is_file():
        raise TierHpoError(f"no finished study for {tier} {budget} h{horizon} ({path} is missing); {hint}")
    try:
        best = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TierHpoError(f"{path} is not valid JSON ({exc.msg}); {hint}") from exc
    missing = [k for k in BEST_KEYS if k not in best]
    if missing or METRIC not in best.get("metrics", {}):
        raise TierHpoError(f"{path} lacks {missing or [f'metrics.{METRIC}']}; it was not written by tierhpo hpo; {hint}")
    return Study(tier, budget, horizon, directory, best)


def studied_horizons(tier: str) -> list[int]:
    """Horizons with at least one finished study (a ``best.json``) of ``tier`` on disk."""
    root = paths.results_dir() / "hpo" / tier
    found = {int(p.parent.name[1:]) for p in root.glob("*/h*/best.json") if p.parent.name[1:].isdigit()}
    return sorted(found)


def check_study_horizon(tier: str, horizon: int) -> None:
    """Refuse a ``--horizon`` no study can have, with a suggestion that can work: the studied
    horizons, or what to add to params.yaml and run first."""
    from training.dataset import check_horizon, load_data_config

    data_cfg = load_data_config()
    check_horizon(horizon, data_cfg.horizons)
    if horizon in data_cfg.horizons:
        return  # read_study names the missing study and the `tierhpo hpo` command that makes it
    studied = studied_horizons(tier)
    use = f"studies of {tier} exist for --horizon {', '.join(map(str, studied))}; " if studied else ""
    raise TierHpoError(
        f"no studies of {tier} h{horizon}: {horizon} is not in data.horizons {data_cfg.horizons}; {use}"
        f"to study it, add {horizon} to data.horizons and hpo.horizons, rebuild the tiers and run `tierhpo hpo` first"
    )


def resolve_budgets(budgets: list[str] | None) -> list[str]:
    """Budgets in ascending size: the given ones, else the ``hpo`` section's list (the one place they are declared)."""
    from training.budget import parse_budget

    if not budgets:
        hpo = config.load_params().get("hpo") or {}
        budgets = hpo.get("budgets") or []
        if not budgets:
            raise TierHpoError("no budgets: pass --budgets 2M,20M or declare hpo.budgets in params.yaml")
    budgets = [str(b).strip() for b in budgets]
    if len(set(map(parse_budget, budgets))) != len(budgets):
        raise TierHpoError(f"budgets must be distinct, got {budgets}")
    return sorted(budgets, key=parse_budget)


def load_data(study: Study) -> Any:
    """The tier the study was trained on (its symbol, context length), refused unless validated."""
    from training.dataset import load_data_config, load_tier

    symbol = study.best.get("symbol") or load_data_config().symbol
    return load_tier(symbol, study.tier, study.horizon, study.model_config().context_len, require_validated=True)


