"""End to end on a fresh copy of the repo: `tierhpo ingest --ensure`, then `dvc repro` of the data stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

DATA_STAGES = ["tiers", "validate"]  # the matrix groups: tiers@a20 ... validate@a100
TIERS = ("a20", "a50", "a100")


def _run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("TIERHPO_ROOT", None)  # the stage commands find the copy's root from their cwd
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_fresh_clone_builds_and_validates_every_tier(repo_copy):
    repo = repo_copy
    assert (repo / "data.dvc").is_file() and not (repo / "data" / "raw").exists()
    assert not (repo / ".dvc" / "cache").exists()  # no cache, no remote: like a fresh clone

    ensured = _run(repo, "tierhpo", "ingest", "--ensure")
    assert "regenerated data/raw from the bundled S&P 500; hash matches data.dvc" in ensured.stdout

    first = _run(repo, "dvc", "repro", *DATA_STAGES)
    for tier in TIERS:
        assert f"Running stage 'tiers@{tier}'" in first.stdout
        assert f"Running stage 'validate@{tier}'" in first.stdout
        summary = json.loads((repo / "reports" / "validation" / f"SPY_{tier}.json").read_text())
        assert summary["success"] and summary["n_rows"] == 5031 - 252 - 5
        assert (repo / "data" / "tiers" / f"SPY_{tier}.parquet").is_file()
    assert "up to date" in _run(repo, "dvc", "status", *DATA_STAGES).stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock["tiers@a50"]["params"]["params.yaml"]) >= {"data.symbol", "data.horizons", "tiers"}

    second = _run(repo, "dvc", "repro", *DATA_STAGES)
    assert "Running stage" not in second.stdout  # nothing changed, nothing runs

    # Outputs are in the cache: a deleted tier comes back with `dvc checkout`, byte for byte.
    parquet = repo / "data" / "tiers" / "SPY_a50.parquet"
    content = parquet.read_bytes()
    parquet.unlink()
    _run(repo, "dvc", "checkout", *DATA_STAGES)
    assert parquet.read_bytes() == content
    assert "up to date" in _run(repo, "dvc", "status", *DATA_STAGES).stdout

    # Generated data stays out of git; data.dvc and the .gitignore files DVC wrote are what to commit.
    untracked = _run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout
    assert "data/raw/" not in untracked and ".parquet" not in untracked and "reports/validation/SPY" not in untracked


def test_an_invalid_tier_stops_the_pipeline(repo_copy):
    repo = repo_copy
    _run(repo, "tierhpo", "ingest", "--ensure")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["positive_rate_max"] = 0.2  # h5 positives are ~40-60 %: the gate must close
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    failed = _run(repo, "dvc", "repro", "validate@a20", check=False)
    assert failed.returncode != 0
    assert "FAILED [splits] expect_column_values_to_be_between(column=positive_rate" in failed.stderr
    assert "tierhpo: error: SPY_a20 failed validation" in failed.stderr
    assert not (repo / "reports" / "validation" / "SPY_a20.json").exists()
    assert (repo / "reports" / "validation" / "SPY_a20" / "data_docs" / "index.html").is_file()
