"""The `tierhpo` console script: every stage has --help, and user errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import STAGES, app


def run_app(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tierhpo", *args])
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_every_stage(monkeypatch, capsys):
    code, out, _ = run_app(monkeypatch, capsys, "--help")
    assert code == 0
    for name in STAGES:
        assert name in out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_help(monkeypatch, capsys, stage):
    code, out, err = run_app(monkeypatch, capsys, stage, "--help")
    assert code == 0, err
    assert "Usage:" in out and "Traceback" not in err


def test_missing_option_is_a_usage_error(monkeypatch, capsys):
    code, _, err = run_app(monkeypatch, capsys, "tiers")
    assert code == 2
    assert "Missing option '--tier'" in err


def test_user_error_is_one_line_with_exit_2_from_the_console_script():
    result = subprocess.run(
        [sys.executable, "-c", "from pipelines.cli import app; app()", "tiers", "--tier", "a7"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "tierhpo: error: unknown tier 'a7'; choose one of a20, a50, a100"
