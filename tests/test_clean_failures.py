"""Bad input, case by case: one actionable line, a non-zero exit, no traceback, nothing changed on disk.

One table (``CASES``): each row names a setup (what is broken in a copy of a small, ingested,
tiered and validated project), the ``tierhpo`` invocation and a fragment of the expected
message. Each case runs the real entry point in-process on its own copy of the project and
compares a hash of every file in it before and after.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, make_ohlcv
from shrink import shrink

SYMBOL_300 = "A" * 300


def _params() -> dict:
    return shrink(data={"tiers": ["a20", "a50"], "horizons": [1, 2], "context_len": 8, "min_windows_per_split": 20})


@pytest.fixture(scope="module")
def base_project(tmp_path_factory) -> Path:
    """SPY ingested, a50 built and validated (no study): the state every case starts from."""
    import subprocess

    root = tmp_path_factory.mktemp("clean") / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    make_ohlcv(800).to_csv(root.parent / "src.csv", index=False)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    env = {**os.environ, "TIERHPO_ROOT": str(root), "TIERHPO_STORE_DIR": str(root / "stores"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for args in (["ingest", "--source", str(root.parent / "src.csv")], ["tiers", "--tier", "a50"],
                 ["validate", "--tier", "a50"]):
        done = subprocess.run([sys.executable, "-c", "from pipelines.cli import app; app()", *args], cwd=root,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return root


# ---- setups: each breaks one thing in the case's project copy (root) or writes an input file (tmp) ----


def _params_bytes(root: Path, tmp: Path, data: bytes) -> None:
    (root / "params.yaml").write_bytes(data)


def latin1_params(root: Path, tmp: Path) -> None:
    _params_bytes(root, tmp, b"# caf\xe9 prices\n" + (root / "params.yaml").read_bytes())


def yaml_syntax_error(root: Path, tmp: Path) -> None:
    text = (root / "params.yaml").read_text()
    _params_bytes(root, tmp, text.replace("context_len: 8", "context_len: [8", 1).encode())


def long_bad_value(root: Path, tmp: Path) -> None:
    params = _params()
    params["data"]["threshold"] = "x" * 5000
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def bad_data_tier(root: Path, tmp: Path) -> None:
    params = _params()
    params["data"]["tiers"] = ["a50", "a7"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def bad_data_horizons(root: Path, tmp: Path) -> None:
    params = _params()
    params["data"]["horizons"] = [0, 1]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def garbage_validation(root: Path, tmp: Path) -> None:
    (root / "reports" / "validation" / "SPY_a50.json").write_bytes(b"\x00\x01 not json {")


def foreign_validation(root: Path, tmp: Path) -> None:
    (root / "reports" / "validation" / "SPY_a50.json").write_text("[1, 2, 3]\n")


def semicolon_csv(root: Path, tmp: Path) -> None:
    make_ohlcv(800).to_csv(tmp / "prices.csv", sep=";", index=False)


def single_line_csv(root: Path, tmp: Path) -> None:
    """One 2 MB line after the header (a 50 MB one used to keep pandas' tokenizer busy for minutes)."""
    (tmp / "prices.csv").write_text("Date,Open,High,Low,Close,Volume\n" + "1," * 1_000_000)


def binary_csv(root: Path, tmp: Path) -> None:
    (tmp / "prices.csv").write_bytes(bytes(range(256)) * 20)


def latin1_csv(root: Path, tmp: Path) -> None:
    make_ohlcv(800).to_csv(tmp / "prices.csv", index=False)
    (tmp / "prices.csv").write_bytes((tmp / "prices.csv").read_bytes().replace(b"Date", b"D\xe4te", 1))


def latin1_deep_in_csv(root: Path, tmp: Path) -> None:
    make_ohlcv(800).to_csv(tmp / "prices.csv", index=False)
    data = (tmp / "prices.csv").read_bytes()
    at = len(data) - 100  # far past the sniffed head: pandas fails mid-file
    (tmp / "prices.csv").write_bytes(data[:at] + b"\xe9" + data[at + 1:])
    (tmp / "offset").write_text(str(at))


def bad_date_csv(root: Path, tmp: Path) -> None:
    frame = make_ohlcv(800)
    frame["Date"] = frame["Date"].astype(str).where(frame.index != 5, "yesterday")
    frame.to_csv(tmp / "prices.csv", index=False)


def good_csv(root: Path, tmp: Path) -> None:
    make_ohlcv(800).to_csv(tmp / "prices.csv", index=False)


def nothing(root: Path, tmp: Path) -> None:
    pass


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # "{tmp}" stands for the case's input folder
    message: str  # regular expression searched in the one error line
    setup: Callable[[Path, Path], None] = nothing
    tags: tuple[str, ...] = field(default=())


HPO = ("hpo", "--budget", "20K", "--horizon", "1")
DATA_TIERS = r"unknown tier 'a99'; choose one of a20, a50 \(data\.tiers\)"
HORIZON_0 = r"--horizon must be >= 1 \(days ahead of the label\), got 0; data\.horizons lists 1, 2"
HORIZON_9 = (r"no studies of a50 h9: 9 is not in data\.horizons \[1, 2\]; to study it, add 9 to data\.horizons "
             r"and hpo\.horizons, rebuild the tiers and run `tierhpo hpo` first")
READ_VALIDATION = r"SPY_a50\.json is not a readable validation record .*regenerate it with `tierhpo validate --tier a50`"

CASES: dict[str, Case] = {
    # 1. params.yaml
    "params.yaml not UTF-8": Case(("tiers", "--tier", "a50"),
                                  r"params\.yaml is not UTF-8 text: byte 0xe9 at offset 5 cannot be decoded",
                                  latin1_params),
    "params.yaml YAML syntax": Case(("tiers", "--tier", "a50"),
                                    r"params\.yaml, line \d+, column \d+: invalid YAML \(.*\); fix the syntax there",
                                    yaml_syntax_error),
    "params.yaml 5000-char value": Case(("tiers", "--tier", "a50"),
                                        r"data\.threshold: expected a number, got 'xxx+\.\.\.\(5000 chars\)$",
                                        long_bad_value),
    # 2. --horizon and --tier
    "hpo --horizon 0": Case(("hpo", "--tier", "a50", "--budget", "20K", "--horizon", "0"), HORIZON_0),
    "baselines --horizon 0": Case(("baselines", "--tier", "a50", "--horizon", "0"), HORIZON_0),
    "cross-budget --horizon 0": Case(("cross-budget", "--tier", "a50", "--horizon", "0"), HORIZON_0),
    "promote --horizon 0": Case(("promote", "--tier", "a50", "--horizon", "0"), HORIZON_0),
    "hpo --horizon 9": Case(("hpo", "--tier", "a50", "--budget", "20K", "--horizon", "9"),
                            r"horizon 9 is not in SPY_a50 \(built for \[1, 2\]\); add it to data\.horizons"),
    "baselines --horizon 9": Case(("baselines", "--tier", "a50", "--horizon", "9"),
                                  r"horizon 9 is not in data\.horizons \[1, 2\]; use one of those, or add it"),
    "cross-budget --horizon 9": Case(("cross-budget", "--tier", "a50", "--horizon", "9"), HORIZON_9),
    "promote --horizon 9": Case(("promote", "--tier", "a50", "--horizon", "9"), HORIZON_9),
    "cross-budget --horizon 2, no study": Case(
        ("cross-budget", "--tier", "a50", "--horizon", "2"),
        r"no finished study for a50 20K h2 .*; run: tierhpo hpo --tier a50 --budget 20K --horizon 2"),
    "hpo --tier a99": Case(("hpo", "--tier", "a99", "--budget", "20K", "--horizon", "1"), DATA_TIERS),
    "cross-budget --tier a99": Case(("cross-budget", "--tier", "a99", "--horizon", "1"), DATA_TIERS),
    "promote --tier a99": Case(("promote", "--tier", "a99", "--horizon", "1"), DATA_TIERS),
    "baselines --tier a99": Case(("baselines", "--tier", "a99", "--horizon", "1"), DATA_TIERS),
    "validate --tier a99": Case(("validate", "--tier", "a99"), DATA_TIERS),
    "tiers --tier a99": Case(("tiers", "--tier", "a99"), DATA_TIERS),
    "report --tier a99": Case(("report", "--tier", "a99"),
                              r"unknown tier\(s\) 'a99'; choose one of a20, a50 \(data\.tiers in params\.yaml\)"),
    "params.yaml data.horizons [0, 1]": Case(("tiers", "--tier", "a50"),
                                             r"data\.horizons: need distinct positive integers, got \[0, 1\]$",
                                             bad_data_horizons),
    "params.yaml data.tiers [a7]": Case(("tiers", "--tier", "a50"),
                                        r"data\.tiers: unknown tier 'a7'; choose one of a20, a50, a100$", bad_data_tier),
    # 3. the validation record
    "garbage validation JSON (hpo)": Case(("hpo", "--tier", "a50", "--budget", "20K", "--horizon", "1"),
                                          READ_VALIDATION, garbage_validation),
    "garbage validation JSON (baselines)": Case(("baselines", "--tier", "a50", "--horizon", "1"),
                                                READ_VALIDATION, garbage_validation),
    "foreign validation JSON": Case(
        ("baselines", "--tier", "a50", "--horizon", "1"),
        r"SPY_a50\.json is not a validation record written by tierhpo validate .*`tierhpo validate --tier a50`",
        foreign_validation),
    # ingest (these already gave one line)
    "ingest --symbol ''": Case(("ingest", "--source", "{tmp}/prices.csv", "--symbol", ""),
                               r"symbol is empty; give one such as SPY", good_csv),
    "ingest 300-char --symbol": Case(("ingest", "--source", "{tmp}/prices.csv", "--symbol", SYMBOL_300),
                                     r"symbol 'AAA+\.\.\.\(300 chars\) is too long: at most \d+ characters", good_csv),
    "ingest semicolon CSV": Case(("ingest", "--source", "{tmp}/prices.csv"),
                                 r"'prices\.csv' looks semicolon-separated .*save it comma-separated", semicolon_csv),
    "ingest single 2 MB line": Case(("ingest", "--source", "{tmp}/prices.csv"),
                                    r"'prices\.csv' has a line longer than 64 KiB", single_line_csv),
    "ingest binary .csv": Case(("ingest", "--source", "{tmp}/prices.csv"),
                               r"'prices\.csv' is not a text CSV \(binary content\)", binary_csv),
    "ingest latin-1 CSV": Case(("ingest", "--source", "{tmp}/prices.csv"),
                               r"'prices\.csv' is not UTF-8 text: byte 0xe4 at offset 1 cannot be decoded; save it as UTF-8 CSV", latin1_csv),
    "ingest latin-1 byte deep in CSV": Case(("ingest", "--source", "{tmp}/prices.csv"),
                                            r"'prices\.csv' is not UTF-8 text: byte 0xe9 at offset {offset} cannot",
                                            latin1_deep_in_csv),
    "ingest unparsable date": Case(("ingest", "--source", "{tmp}/prices.csv"),
                                   r"prices\.csv: unparsable date 'yesterday' in row 6; use YYYY-MM-DD", bad_date_csv),
    "ingest missing file": Case(("ingest", "--source", "{tmp}/nope.csv"), r"source file not found: .*nope\.csv"),
}


@pytest.fixture(autouse=True)
def keep_logging_handlers():
    """The in-process CLI lets DVC bind its log handlers to this test's captured stderr; put the
    previous handlers back so later tests (in other modules) never log to a closed stream."""
    import logging

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("dvc", "mlflow", "optuna"))]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def tree_hash(root: Path) -> dict[str, str]:
    """md5 of every file under ``root`` (the .git and .dvc internals included)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_entry_point(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    """The real console entry point in-process; an escaping exception becomes a Traceback in the output."""
    from pipelines.cli import app

    monkeypatch.setattr(sys, "argv", ["tierhpo", *args])
    code, crash = 0, ""
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  (the assertion below reports it)
        code, crash = 1, traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out + err + crash


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clean_line(name, base_project, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    root = tmp_path / "proj"
    shutil.copytree(base_project, root, symlinks=True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    case.setup(root, inputs)
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    monkeypatch.setenv("TIERHPO_STORE_DIR", str(root / "stores"))
    monkeypatch.chdir(root)
    before = tree_hash(root)

    code, output = run_entry_point(monkeypatch, capsys, [a.replace("{tmp}", str(inputs)) for a in case.args])

    assert "Traceback" not in output, output
    assert code != 0, output
    errors = [line for line in output.splitlines() if line.startswith("tierhpo: error: ")]
    assert len(errors) == 1, output
    offset = inputs / "offset"
    message = case.message.replace("{offset}", offset.read_text()) if offset.exists() else case.message
    assert re.search(message, errors[0]), errors[0]
    assert len(errors[0]) < 400, errors[0]
    assert len(output.strip().splitlines()) <= 3, output
    assert tree_hash(root) == before  # nothing written, moved or deleted


def test_dst_mixed_utc_offsets_are_read_as_local_days(base_project, tmp_path, monkeypatch, capsys):
    """A US feed's -05:00/-04:00 timestamps (both sides of a DST change) are the same days: the data is unchanged."""
    root = tmp_path / "proj"
    shutil.copytree(base_project, root, symlinks=True)
    frame = make_ohlcv(800)
    frame["Date"] = pd.to_datetime(frame["Date"]).dt.tz_localize("America/New_York").astype(str)
    assert frame["Date"].str.endswith("-05:00").any() and frame["Date"].str.endswith("-04:00").any()
    frame.to_csv(tmp_path / "dst.csv", index=False)
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    monkeypatch.setenv("TIERHPO_STORE_DIR", str(root / "stores"))
    monkeypatch.chdir(root)
    before = tree_hash(root)
    code, output = run_entry_point(monkeypatch, capsys, ["ingest", "--source", str(tmp_path / "dst.csv")])
    assert code == 0 and "Traceback" not in output, output
    assert "data.dvc unchanged" in output
    assert {k: v for k, v in tree_hash(root).items() if not k.startswith(".dvc/")} == \
        {k: v for k, v in before.items() if not k.startswith(".dvc/")}
