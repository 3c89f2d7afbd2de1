"""``dvc exp run -S`` on the tiny profile: a param sweep recorded as a DVC experiment.

Only the cheap corner of the pipeline runs (``baselines@a20-1``: tiers, validate, baselines).
The stores are left at their default, ``<repo>/stores`` (common/paths.py), so the test also
checks that an experiment run in a temp copy (``--temp``: ``<repo>/.dvc/tmp/exps/...``) uses the
workspace's stores rather than creating its own inside the temp copy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo
from shrink import shrink
from test_pipeline_e2e import BIN, git, sh

pytestmark = pytest.mark.slow

STAGE = "baselines@a20-1"
METRICS = "results/baselines/a20/h1/metrics.json"


def default_store_env() -> dict[str, str]:
    """The venv first on PATH and no store overrides: stores resolve to <repo>/stores."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    for var in ("TIERHPO_STORE_DIR", "MLFLOW_TRACKING_URI", "TIERHPO_OPTUNA_STORAGE", "MLFLOW_RUN_ID",
                "MLFLOW_EXPERIMENT_ID", "TIERHPO_ROOT", "PYTHONPATH"):
        env.pop(var, None)
    return env


def experiments(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    """``dvc exp show --json``, flattened to {experiment name: {"params": ..., "metrics": ...}}."""
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env))
    out: dict[str, dict] = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs") or []:
                data = revision.get("data") or {}
                out[revision.get("name") or exp.get("name") or revision["rev"]] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": data.get("metrics", {}).get(METRICS, {}).get("data", {}),
                }
    return out


def test_dvc_exp_run_set_param_records_an_experiment_with_the_workspace_stores(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(shrink(params), sort_keys=False))
    git(repo, "commit", "-qam", "tiny profile")
    env = default_store_env()
    sh([str(BIN / "tierhpo"), "ingest", "--ensure"], repo, env)
    stores = repo / "stores"  # the default store folder (gitignored), created on first use

    sh(["dvc", "exp", "run", STAGE, "-n", "c-half", "-S", "baselines.logreg_c=0.5"], repo, env)
    sh(["dvc", "exp", "run", "--temp", STAGE, "-n", "c-quarter", "-S", "baselines.logreg_c=0.25"], repo, env)

    shown = experiments(repo, env)
    assert {"c-half", "c-quarter"} <= set(shown), shown
    for name, c in (("c-half", 0.5), ("c-quarter", 0.25)):
        assert shown[name]["params"]["baselines"]["logreg_c"] == c
        metrics = shown[name]["metrics"]
        assert metrics, f"{name}: no baselines metrics recorded"
        assert "auc" in json.dumps(metrics), metrics

    # The workspace run left its params and outputs in the workspace.
    assert yaml.safe_load((repo / "params.yaml").read_text())["baselines"]["logreg_c"] == 0.5
    assert (repo / METRICS).is_file()

    # A stage that opens the stores, run the way `dvc exp run --temp` runs it (cwd inside the temp copy):
    # its MLflow and Optuna stores are the workspace's, never new ones inside .dvc/tmp/exps.
    fake_temp = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    fake_temp.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        (fake_temp / name).write_text((repo / name).read_text())
    probe = ("from common import paths; print(paths.store_dir()); print(paths.mlflow_tracking_uri()); "
             "print(paths.optuna_storage_url()); print(paths.mlflow_artifact_root())")
    lines = sh([sys.executable, "-c", probe], fake_temp, {**env, "PYTHONPATH": str(repo)}).strip().splitlines()[-4:]
    assert Path(lines[0]) == stores.resolve()
    assert lines[1] == f"sqlite:///{stores.resolve() / 'mlflow.db'}"
    assert lines[2] == f"sqlite:///{stores.resolve() / 'optuna.db'}"
    assert lines[3] == (stores.resolve() / "mlartifacts").as_uri()
    created = [p for p in (repo / ".dvc" / "tmp" / "exps").rglob("*")
               if p.name in ("stores", "mlflow.db", "optuna.db", "mlartifacts", "mlruns")]
    assert not created, created
