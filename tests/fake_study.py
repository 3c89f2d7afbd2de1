"""A small but real finished study, as ``tierhpo hpo`` leaves it, for the promotion and transfer tests.

The model is trained by the real trainer on a synthetic tier; ``best.json``/``model.pt``/
``trials.csv`` (and, with ``refit_seeds``, the refit files) follow docs/architecture.md, and the
study's parent and best-trial runs exist in the (per-test) MLflow store. Only the search itself is
skipped: one trial is "the best". :func:`shared_studies` builds a module's studies once;
:func:`untrained_study` is a ``best.json`` alone, for plans that train nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from conftest import use_stores
from shrink import shrink, train_config

from common import paths
from training.budget import Architecture, count_params, parse_budget, solve
from training.dataset import TierData
from training.study_record import Study
from training.synthetic import synthetic_tier
from training.trainer import train

TIER, HORIZON = "a50", 1


def point_at(root: Path, monkeypatch: Any) -> None:
    """Use the MLflow/Optuna stores under ``root`` (shared by the tests of one module)."""
    stores = root / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    use_stores(monkeypatch, stores)


def tiny_tier(seed: int = 0) -> TierData:
    return synthetic_tier(n_days=1500, n_features=6, context_len=16, horizon=HORIZON, seed=seed, tier=TIER)


def project(root: Path, monkeypatch: Any, sections: dict[str, Any]) -> Path:
    """A throwaway project root (params.yaml + results/) that ``common.paths`` resolves to: the
    shrunk ``data`` section (tests/shrink.py) for the synthetic tier, then ``sections`` as given."""
    root.mkdir(parents=True, exist_ok=True)
    data = shrink(data={"symbol": "SYN", "tiers": [TIER], "horizons": [HORIZON], "context_len": 16})["data"]
    (root / "params.yaml").write_text(yaml.safe_dump({"data": data, **sections}))
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    return root


def experiment_id(tier: str = TIER) -> str:
    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    found = client.get_experiment_by_name(f"tierhpo-{tier}")
    if found:
        return found.experiment_id
    return client.create_experiment(f"tierhpo-{tier}", artifact_location=paths.mlflow_artifact_root())


def make_study(
    data: TierData,
    budget: str,
    arch: Architecture,
    *,
    lr: float = 3e-3,
    dropout: float = 0.1,
    seed: int = 0,
    epochs: int = 2,
    trial_number: int = 3,
    study_name: str | None = None,
    state_dict_hook: Any = None,
    refit_seeds: int = 0,
) -> dict[str, Any]:
    """Train the study's "best trial" and write its study dir; returns ``best.json``'s content.

    ``state_dict_hook(state_dict) -> state_dict`` can break the model on purpose (e.g. collapse it).
    ``refit_seeds``: also the HPO stage's refit (``refit.json``, ``refit.pt``, ``val_predictions.parquet``)
    of that many fresh seeds, trained by the stage's own code.
    """
    model_cfg = solve(arch, budget, data.n_features, data.context_len, dropout=dropout)
    assert model_cfg is not None, f"{arch} is infeasible at {budget}"
    train_cfg = train_config(lr=lr, batch_size=64, max_epochs=epochs, patience=epochs, seed=seed, progress=False)
    result = train(model_cfg, train_cfg, data)
    state = result.state_dict if state_dict_hook is None else state_dict_hook(result.state_dict)
    metrics = result.val_metrics
    if state_dict_hook is not None:  # the recorded metrics must describe the weights we save
        from scipy.special import expit

        from evaluation.metrics import classification_metrics
        from training.inference import predict_logits

        p_val = expit(predict_logits(model_cfg, state, data, "val", device="cpu"))
        metrics = classification_metrics(data.labels_of("val"), p_val, "val", data.base_rate)

    exp = experiment_id(data.tier)
    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    name = study_name or f"{data.tier}-{budget}-h{data.horizon}-fake{seed}"
    parent = client.create_run(exp, run_name=name, tags={"tier": data.tier, "budget": budget})
    child = client.create_run(exp, run_name=f"trial-{trial_number}",
                              tags={"mlflow.parentRunId": parent.info.run_id, "trial_number": str(trial_number)})
    for key, value in metrics.items():
        client.log_metric(child.info.run_id, key, value)
    client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")

    best = {
        "study_name": name, "storage": "sqlite:///fake", "tier": data.tier, "budget": budget,
        "budget_params": parse_budget(budget), "horizon": data.horizon, "seed": seed,
        "symbol": "SYN", "context_len": data.context_len, "n_features": data.n_features,
        "trial_number": trial_number, "mlflow_run_id": child.info.run_id, "parent_run_id": parent.info.run_id,
        "experiment_id": exp,
        "params": {"lr": lr, "dropout": dropout, "n_layers": arch.n_layers, "n_heads": arch.n_heads,
                   "d_ff_ratio": arch.d_ff_ratio, "patch_len": arch.patch_len, "batch_size": 64},
        "model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict(),
        "n_params": count_params(model_cfg), "metrics": metrics,
        "raw_version": "fake-data", "git_commit": "fake-commit",
    }
    directory = paths.study_dir(data.tier, budget, data.horizon)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "best.json").write_text(json.dumps(best, indent=2))
    torch.save(state, directory / "model.pt")
    pd.DataFrame({"number": [0, 1, 2, trial_number], "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
                  "seconds": [2.0, 0.5, 4.0, 3.0]}).to_csv(directory / "trials.csv", index=False)
    if refit_seeds:
        from pipelines.hpo import refit_best, write_refit
        from training.seeds import fresh_seeds

        write_refit(refit_best(best, data, fresh_seeds(seed, refit_seeds), ece_bins=15), directory)
    return best


def untrained_study(tier: str, budget: str, arch: Architecture, seed: int, directory: Path, *, n_features: int,
                    context_len: int = 16, rules: dict[str, Any] | None = None) -> Study:
    """A study as ``best.json`` describes it, trained by nobody (for plans, which train nothing);
    ``rules``: the budget solver's tolerance and min_head_dim."""
    cfg = solve(arch, budget, n_features, context_len, dropout=0.1, **(rules or {}))
    assert cfg is not None, f"{arch} is infeasible at {budget} with {n_features} features"
    best = {"study_name": f"{tier}-{budget}", "trial_number": 1, "mlflow_run_id": "r", "experiment_id": "0",
            "params": {"d_ff_ratio": arch.d_ff_ratio, "lr": 1e-3}, "model_config": cfg.to_dict(),
            "train_config": train_config(seed=seed).to_dict(), "n_params": parse_budget(budget),
            "metrics": {"val/auc": 0.6}}
    directory.mkdir(parents=True, exist_ok=True)
    return Study(tier, budget, HORIZON, directory, best)


@dataclass
class SharedStudies:
    """Studies built once for a test module, in their own stores and project (``shared_studies``)."""

    root: Path
    data: Any  # one TierData, or tier -> TierData
    best: dict[str, dict[str, Any]]  # key -> best.json

    def use(self, monkeypatch: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
        """Point this test at the module's stores and project; ``(data, best)``."""
        point_at(self.root, monkeypatch)
        monkeypatch.setenv("TIERHPO_ROOT", str(self.root / "proj"))
        return self.data, self.best


def shared_studies(tmp_path_factory: Any, name: str, sections: dict[str, Any],
                   make: Callable[[], tuple[Any, dict[str, dict[str, Any]]]]) -> SharedStudies:
    """Build a module's studies once: ``make() -> (data, best)`` runs with fresh stores and a project
    of ``sections`` (see :func:`project`)."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        point_at(root, mp)
        project(root / "proj", mp, sections)
        data, best = make()
    return SharedStudies(root, data, best)
