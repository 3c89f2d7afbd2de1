"""A throwaway tierhpo project (params.yaml, dvc.yaml, a DVC repo) for the data-stage tests.

``TINY_DATA`` is the shrunk ``data`` section (tests/shrink.py) with what makes ``make_ohlcv(800)``
yield valid splits in well under a second: context 8 days, purge gap 5 + 8 = 13 rows, 20 windows
per split, and every tier and horizon of params.yaml.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from shrink import shrink

DATA_SECTIONS = ("data", "ingest", "tiers", "validate")  # what the data stages read
TINY = shrink(data={"tiers": ["a20", "a50", "a100"], "horizons": [1, 2, 3, 5], "context_len": 8,
                    "min_windows_per_split": 20},
              validate={"show_rows": 3, "data_docs": False})
TINY_DATA: dict[str, Any] = TINY["data"]
VALIDATE: dict[str, Any] = TINY["validate"]


def write_params(root: Path, data: dict[str, Any] | None = None, validate: dict[str, Any] | None = None) -> None:
    params = {name: TINY[name] for name in DATA_SECTIONS} | {"data": data or TINY_DATA,
                                                             "validate": validate or VALIDATE}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(root: Path, data: dict[str, Any] | None = None, dvc: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_params(root, data)
    (root / "dvc.yaml").write_text("stages: {}\n")
    if dvc:
        from dvc.repo import Repo

        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        Repo.init(str(root)).close()
    return root


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A DVC project under tmp_path; paths.project_root() resolves to it."""
    root = make_project(tmp_path / "proj")
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def light_project(tmp_path, monkeypatch) -> Path:
    """Like ``project`` without git and DVC, for stages that only read and write files."""
    root = make_project(tmp_path / "proj", dvc=False)
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


def tiny_data(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(TINY_DATA)
    data.update(changes)
    return data


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``tierhpo ARGS`` in-process through the real entry point; return (exit code, stdout, stderr)."""
    from pipelines.cli import app

    monkeypatch.setattr(sys, "argv", ["tierhpo", *args])
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
