"""``hpo.workers``: how many worker processes ``tierhpo hpo`` starts, and that a multi-worker
study writes its outputs (best.json, model.pt, metrics.json, trials.csv, refit) exactly as a
single-process one does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hpo_tiny import settings, store_templates, tiny_data, tiny_spec  # noqa: F401  (fixture used by name)

from common import config
from common.errors import TierHpoError
from pipelines.hpo import refit_best, resolve_workers, write_refit
from training.search.config import HpoConfig
from training.search.results import write_outputs
from training.search.study import run_study
from training.search.workers import plan_workers, run_workers

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def test_zero_means_one_worker_per_core_capped_by_trials():
    assert resolve_workers(0, trials=10, cores=2) == 2
    assert resolve_workers(0, trials=10, cores=16) == 10
    assert resolve_workers(0, trials=1, cores=2) == 1
    assert resolve_workers(0, trials=10, cores=0) == 1
    assert resolve_workers(3, trials=10, cores=2) == 3  # an explicit count is taken as given
    assert resolve_workers(1, trials=10, cores=2) == 1
    with pytest.raises(TierHpoError, match="workers"):
        resolve_workers(-1, trials=10, cores=2)


def test_one_worker_per_core_gets_one_thread_each():
    n = resolve_workers(0, trials=10, cores=2)
    plans = plan_workers(n, cpus=[0, 1])
    assert [p.threads for p in plans] == [1, 1] and [p.cpus for p in plans] == [(0,), (1,)]


def test_params_yaml_default_and_validation():
    hpo = config.build(HpoConfig, REPO_PARAMS["hpo"], where="hpo")
    assert hpo.workers == 0
    assert config.build(HpoConfig, {**REPO_PARAMS["hpo"], "workers": 2}, where="hpo").workers == 2
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(TierHpoError, match="hpo.workers"):
            config.build(HpoConfig, {**REPO_PARAMS["hpo"], "workers": bad}, where="hpo")


def test_dvc_stage_tracks_hpo_workers():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "hpo.workers" in dvc["stages"]["hpo"]["params"]


def _stores(root, templates):
    root.mkdir()
    for name in ("mlflow.db", "optuna.db"):
        shutil.copyfile(templates / name, root / name)
    return f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"


_RUN_SPECIFIC = {"mlflow_run_id", "parent_run_id", "experiment_id", "storage"}


def test_two_workers_write_the_same_outputs_as_one_process(tmp_path, store_templates, monkeypatch):  # noqa: F811
    """All 4 trials are forced (the same points in either mode), so both studies train the same
    configurations with the same seed: the same best trial, best.json, model and refit."""
    data = tiny_data()
    spec = tiny_spec(data, forced=4)
    outs = {}
    threads = torch.get_num_threads()
    for mode in ("single", "workers"):
        storage, mlflow_uri = _stores(tmp_path / mode, store_templates)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        if mode == "single":
            torch.set_num_threads(1)
            try:
                result = run_study(spec, data, 4, storage, settings=settings(mlflow_uri), plots=False)
            finally:
                torch.set_num_threads(threads)
        else:
            result = run_workers(spec, data, 4, storage, n_workers=2, settings=settings(mlflow_uri), plots=False,
                                 threads_per_worker=1)
            assert [e.exitcode for e in result.report.exits] == [0, 0]
        out = tmp_path / mode / "out"
        write_outputs(result, out)
        write_refit(refit_best(result.best, data, [11, 12], ece_bins=10), out)
        outs[mode] = out

    single, multi = outs["single"], outs["workers"]
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in multi.iterdir())
    b1, b2 = (json.loads((d / "best.json").read_text()) for d in (single, multi))
    assert set(b1) == set(b2)
    for key in set(b1) - _RUN_SPECIFIC:
        if key == "metrics":
            assert set(b1[key]) == set(b2[key])
            assert b1[key]["val/auc"] == pytest.approx(b2[key]["val/auc"], abs=1e-6)
        else:
            assert b1[key] == b2[key], key
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (single, multi))
    assert set(m1) == set(m2) and m1["hpo/n_complete"] == m2["hpo/n_complete"] == 4
    t1, t2 = (pd.read_csv(d / "trials.csv") for d in (single, multi))
    assert list(t1.columns) == list(t2.columns) and len(t1) == len(t2) == 4
    r1, r2 = (json.loads((d / "refit.json").read_text()) for d in (single, multi))
    assert set(r1) == set(r2) and r1["seeds"] == r2["seeds"] == [11, 12]
    assert r1["model_config"] == r2["model_config"]
