"""Where a result came from: git commit and the raw data version (data.dvc), tagged onto every MLflow run."""

from __future__ import annotations

import subprocess
from functools import lru_cache

import yaml

from common import paths


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the working copy, with ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    root = paths.project_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # dvc.lock and DVC's .gitignore files change as stages run; they are results, not code.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!*.gitignore"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def raw_version() -> str:
    """The md5 that ``data.dvc`` records for ``data/raw`` (what ``dvc checkout`` restores): the raw
    data's version. The version of a tier's files is ``tier_version`` (``pipelines.hpo``)."""
    dvc_file = paths.project_root() / "data.dvc"
    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "untracked"


def run_tags() -> dict[str, str]:
    return {"git_commit": git_commit(), "raw_version": raw_version()}
