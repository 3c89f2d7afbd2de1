"""Shared fixtures. Every test gets its own MLflow and Optuna stores under tmp_path.

``shrink`` (tests/shrink.py) is the one place that turns the real default params
into a test-sized profile (1-2 epochs, 2-3 trials, tiny budgets); tests that need a config start from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def use_stores(mp: pytest.MonkeyPatch, stores: Path) -> None:
    """MLflow, Optuna and tierhpo's store folder, all in ``stores``."""
    mp.setenv("TIERHPO_STORE_DIR", str(stores))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{stores / 'mlflow.db'}")
    mp.setenv("TIERHPO_OPTUNA_STORAGE", f"sqlite:///{stores / 'optuna.db'}")


def _repo_store_files() -> dict[str, int]:
    """Every file under the repository's own stores (``stores/``, MLflow's ``./mlruns``), with its mtime."""
    return {str(f): f.stat().st_mtime_ns for name in ("stores", "mlruns") if (REPO / name).is_dir()
            for f in (REPO / name).rglob("*") if f.is_file()}


@pytest.fixture(scope="session", autouse=True)
def repo_stores_untouched(tmp_path_factory):
    """Session-wide fallback stores, so set-up that runs before ``isolated_stores`` (a module
    fixture) cannot write the user's own; and a check at the end that nothing did."""
    before = _repo_store_files()
    stores = tmp_path_factory.mktemp("session-stores")
    with pytest.MonkeyPatch.context() as mp:
        use_stores(mp, stores)
        yield
    changed = sorted(f for f, mtime in _repo_store_files().items() if before.get(f) != mtime)
    if changed:
        pytest.fail(f"tests wrote {len(changed)} file(s) into the repository's own stores, e.g. {changed[0]}")


@pytest.fixture(autouse=True)
def isolated_stores(tmp_path, monkeypatch):
    """Point MLflow and Optuna at fresh stores so no test touches the repo's own."""
    stores = tmp_path / "stores"
    stores.mkdir()
    use_stores(monkeypatch, stores)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    from common import mlflow_runs

    monkeypatch.setattr(mlflow_runs, "_taken", {})  # an outer run a stage took in an earlier test
    yield stores
    # A process-global tracking URI outlives this test's environment and silently sends every
    # later test's fluent MLflow calls to this test's store; fail the test that leaked it.
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if tracking is not None and tracking._tracking_uri is not None:
        leaked, tracking._tracking_uri = tracking._tracking_uri, None
        pytest.fail(f"the test left mlflow.set_tracking_uri({leaked!r}) behind; use paths.mlflow_fluent_tracking()")


def make_ohlcv(n: int = 800, seed: int = 0, start: str = "2001-01-02") -> pd.DataFrame:
    """A deterministic GARCH-like random walk with consistent OHLCV columns."""
    rng = np.random.default_rng(seed)
    vol = np.empty(n)
    vol[0] = 0.01
    shocks = rng.standard_normal(n)
    for t in range(1, n):  # volatility clustering, so volatility features carry signal
        vol[t] = np.sqrt(1e-6 + 0.1 * (vol[t - 1] * shocks[t - 1]) ** 2 + 0.88 * vol[t - 1] ** 2)
    close = 100 * np.exp(np.cumsum(vol * shocks))
    open_ = close * np.exp(vol * rng.standard_normal(n) * 0.3)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(n)) * vol * 0.6)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * vol * 0.6)
    volume = rng.lognormal(18, 0.3, n).round()
    dates = pd.bdate_range(start, periods=n)
    return pd.DataFrame(
        {"Date": dates, "Open": open_, "High": high, "Low": low, "Close": close, "Volume": volume}
    )


@pytest.fixture
def synthetic_ohlcv() -> pd.DataFrame:
    return make_ohlcv()


def copy_repo(dest: Path) -> Path:
    """Copy the tracked (and untracked, not ignored) files of the repo into ``dest`` as a new git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest


def build_validated_tier(repo: Path, tier: str, env: dict[str, str]) -> None:
    """Raw data, one tier and its validation in a repo copy: what the HPO stage needs first."""
    for cmd in (["tierhpo", "ingest", "--ensure"], ["tierhpo", "tiers", "--tier", tier],
                ["tierhpo", "validate", "--tier", tier]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True)


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A throwaway git copy of the working tree, for end-to-end ``dvc repro`` tests."""
    return copy_repo(tmp_path / "repo")
