"""tierhpo ingest: validation of raw OHLCV, deterministic data/raw, data.dvc, --ensure."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_ohlcv
from data_project import make_project, project, run_cli  # noqa: F401  (fixture used by name)

from common import paths
from common.errors import TierHpoError
from pipelines import ingest
from training.dataset import load_data_config

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")


def _csv(tmp_path, frame: pd.DataFrame, name: str = "prices.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _dvc_status(root) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.status(targets=["data.dvc"])


@pytest.fixture
def tracked(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A project whose data/raw holds make_ohlcv(800), tracked in data.dvc."""
    code, out, err = run_cli(monkeypatch, capsys, "ingest", "--source", str(_csv(tmp_path, make_ohlcv(800))))
    assert code == 0, err
    return project


@pytest.fixture(scope="module")
def shared_tracked(tmp_path_factory):
    """Like ``tracked``, built once for the tests that must leave it unchanged."""
    root = make_project(tmp_path_factory.mktemp("shared") / "proj")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERHPO_ROOT", str(root))
        source = _csv(root.parent, make_ohlcv(800))
        ingest.ingest(str(source), "SPY", load_data_config())
    return root


@pytest.fixture
def in_shared(shared_tracked, monkeypatch):
    monkeypatch.setenv("TIERHPO_ROOT", str(shared_tracked))
    monkeypatch.chdir(shared_tracked)
    return shared_tracked


# ---- the happy path ----------------------------------------------------------------------


def test_ingest_writes_canonical_csv_and_tracks_it(tracked):
    raw = tracked / "data" / "raw" / "SPY.csv"
    text = raw.read_text()
    assert text.splitlines()[0] == "date,open,high,low,close,volume"
    assert text.splitlines()[1].startswith("2001-01-02,")
    back = ingest.canonical_ohlcv(pd.read_csv(raw))
    src = ingest.canonical_ohlcv(make_ohlcv(800))
    np.testing.assert_allclose(back[["open", "high", "low", "close", "volume"]], src[["open", "high", "low", "close", "volume"]], rtol=1e-11)
    outs = yaml.safe_load((tracked / "data.dvc").read_text())["outs"]
    assert outs[0]["path"] == "data/raw"
    assert outs[0]["md5"] == ingest.dir_md5(tracked / "data" / "raw")
    assert _dvc_status(tracked) == {}  # workspace matches data.dvc and the cache holds it
    assert (tracked / "data" / ".gitignore").read_text().strip() == "/raw"


def test_ingest_is_deterministic_and_idempotent(tracked, tmp_path, monkeypatch, capsys):
    before = (tracked / "data.dvc").read_bytes()
    csv = _csv(tmp_path, make_ohlcv(800), "again.csv")
    code, out, _ = run_cli(monkeypatch, capsys, "ingest", "--source", str(csv))
    assert code == 0 and "unchanged" in out
    assert (tracked / "data.dvc").read_bytes() == before


def test_columns_are_case_insensitive_with_optional_adj_close_and_parquet(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    frame = make_ohlcv(800)
    frame.columns = ["DATE", "open", "HIGH", "Low", "cLoSe", "VOLUME"]
    frame["Adj Close"] = frame["cLoSe"] * 0.5
    frame["Ticker"] = "X"  # extra columns are ignored
    path = tmp_path / "prices.parquet"
    frame.set_index("DATE").to_parquet(path)  # date as the parquet index
    code, out, err = run_cli(monkeypatch, capsys, "ingest", "--source", str(path), "--symbol", "QQQ")
    assert code == 0, err
    raw = pd.read_csv(project / "data" / "raw" / "QQQ.csv")
    assert list(raw.columns) == ["date", "open", "high", "low", "close", "adj_close", "volume"]
    assert "set it to 'QQQ'" in out  # params still say SPY


def test_new_data_is_one_change_of_data_dvc(tracked, tmp_path, monkeypatch, capsys):
    old_md5 = yaml.safe_load((tracked / "data.dvc").read_text())["outs"][0]["md5"]
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--source", str(_csv(tmp_path, make_ohlcv(800, seed=3))))
    assert code == 0, err
    new_md5 = yaml.safe_load((tracked / "data.dvc").read_text())["outs"][0]["md5"]
    assert new_md5 != old_md5 and _dvc_status(tracked) == {}


def test_render_csv_is_byte_stable():
    df = ingest.canonical_ohlcv(make_ohlcv(50))
    first = ingest.render_csv(df)
    assert ingest.render_csv(ingest.canonical_ohlcv(pd.read_csv(pd.io.common.BytesIO(first)))) == first


# ---- bad input: one line, exit 2, nothing overwritten ------------------------------------


def _bad_frames():
    good = make_ohlcv(800)

    def edit(fn):
        frame = good.copy()
        fn(frame)
        return frame

    def nonnumeric(f):
        f["Close"] = f["Close"].astype(object)
        f.loc[10, "Close"] = "12.5x"

    def dup(f):
        f.loc[20, "Date"] = f.loc[19, "Date"]

    def unsorted(f):
        f.loc[[30, 31], "Date"] = f.loc[[31, 30], "Date"].to_numpy()

    def nan_row(f):
        f.loc[40, ["Open", "High", "Low", "Close"]] = np.nan

    def high_low(f):
        f.loc[50, "High"], f.loc[50, "Low"] = f.loc[50, "Low"] * 0.99, f.loc[50, "High"]

    def zero(f):
        f.loc[60, ["Open", "Low"]] = 0.0

    def negative(f):
        f.loc[61, "Close"] = -5.0

    return {
        "missing column": (good.drop(columns=["Volume"]), r"missing column\(s\) volume; expected Date, Open"),
        "non-numeric price": (edit(nonnumeric), r"non-numeric value '12.5x' in column 'close', row 11"),
        "duplicated dates": (edit(dup), r"duplicated date 2001-01-29 \(2 rows share a date\)"),
        "unsorted dates": (edit(unsorted), r"dates are not sorted: 2001-02-13 \(row 32\) comes after 2001-02-14"),
        "NaN row": (edit(nan_row), r"1 row\(s\) with missing or infinite values, first row 41 \(2001-02-27, column\(s\) open, high, low, close\)"),
        "high < low": (edit(high_low), r"high < low on 1 day\(s\), first 2001-03-13"),
        "zero price": (edit(zero), r"non-positive price 0 in column 'open' on 2001-03-27; prices must be > 0"),
        "negative price": (edit(negative), r"non-positive price -5 in column 'close' on 2001-03-28"),
        "too short": (good.head(300), r"only 300 rows, need at least \d+ \(feature warm-up 252"),
    }


BAD = _bad_frames()


def _assert_one_line_error(code: int, err: str, pattern: str) -> None:
    import re

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tierhpo: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_changes_nothing(case, in_shared, tmp_path, monkeypatch, capsys):
    tracked = in_shared
    frame, pattern = BAD[case]
    before = ((tracked / "data.dvc").read_bytes(), (tracked / "data" / "raw" / "SPY.csv").read_bytes())
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--source", str(_csv(tmp_path, frame, "bad.csv")))
    _assert_one_line_error(code, err, pattern)
    after = ((tracked / "data.dvc").read_bytes(), (tracked / "data" / "raw" / "SPY.csv").read_bytes())
    assert after == before
    assert sorted(p.name for p in (tracked / "data").iterdir()) == [".gitignore", "raw"]  # no temp left over


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", r"source file is empty: .*empty\.csv"),
        ("Date,Open,High,Low,Close,Volume\n", r"source file has no data rows: .*empty\.csv"),
    ],
)
def test_empty_file(content, pattern, project, tmp_path, monkeypatch, capsys):  # noqa: F811
    path = tmp_path / "empty.csv"
    path.write_text(content)
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--source", str(path))
    _assert_one_line_error(code, err, pattern)
    assert not (project / "data.dvc").exists() and not (project / "data" / "raw").exists()


def test_path_that_does_not_exist(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--source", str(tmp_path / "nope.csv"))
    _assert_one_line_error(code, err, r"source file not found: .*nope\.csv")


def test_unknown_tier_name(project, monkeypatch, capsys):  # noqa: F811
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a30")
    _assert_one_line_error(code, err, r"unknown tier 'a30'; choose one of a20, a50, a100")


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda f: f.__setitem__("Date", f["Date"].astype(str).where(f.index != 5, "yesterday")),
         r"unparsable date 'yesterday' in row 6"),
        (lambda f: f.loc.__setitem__((70, "Close"), f.loc[70, "High"] * 1.01),
         r"open/close outside \[low, high\] on 1 day\(s\), first 2001-04-10"),
        (lambda f: f.loc.__setitem__((80, "Volume"), -1.0), r"negative volume -1 on 2001-04-24"),
    ],
    ids=["bad date", "close above high", "negative volume"],
)
def test_more_bad_input(mutate, pattern):
    frame = make_ohlcv(800)
    mutate(frame)
    with pytest.raises(TierHpoError, match=pattern):
        ingest.canonical_ohlcv(frame)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "prices.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(TierHpoError, match=r"unsupported file type 'prices.xlsx'"):
        ingest.read_source(path)


def test_too_short_threshold_is_exact(project):  # noqa: F811
    data = load_data_config()
    need = ingest.required_rows(data)
    df = ingest.canonical_ohlcv(make_ohlcv(need))
    ingest.check_length(df, data)
    with pytest.raises(TierHpoError, match="only"):
        ingest.check_length(df.iloc[:-1], data)


# ---- --ensure ------------------------------------------------------------------------------


def test_ensure_is_a_no_op_when_data_matches(tracked, monkeypatch, capsys):
    before = (tracked / "data.dvc").read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, "ingest", "--ensure")
    assert code == 0, err
    assert "matches data.dvc" in out and (tracked / "data.dvc").read_bytes() == before


def test_ensure_restores_from_cache(tracked, monkeypatch, capsys):
    shutil.rmtree(tracked / "data" / "raw")
    code, out, err = run_cli(monkeypatch, capsys, "ingest", "--ensure")
    assert code == 0, err
    assert "restored data/raw from the DVC cache" in out and _dvc_status(tracked) == {}


def test_ensure_refuses_modified_data(tracked, monkeypatch, capsys):
    raw = tracked / "data" / "raw" / "SPY.csv"
    raw.write_text(raw.read_text() + "\n")
    before = (tracked / "data.dvc").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--ensure")
    _assert_one_line_error(code, err, r"data/raw \(\w+\.dir\) differs from data\.dvc \(\w+\.dir\): restore it with")
    assert (tracked / "data.dvc").read_bytes() == before


def test_ensure_fails_loudly_when_tracked_data_is_not_the_bundled_default(tracked, monkeypatch, capsys):
    shutil.rmtree(tracked / "data" / "raw")
    shutil.rmtree(tracked / ".dvc" / "cache")
    before = (tracked / "data.dvc").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--ensure")
    _assert_one_line_error(code, err, r"data/raw is missing and data\.dvc \(\w+\.dir\) is not the bundled S&P 500")
    assert (tracked / "data.dvc").read_bytes() == before  # never re-tracked silently
    assert not (tracked / "data" / "raw").exists()


def test_ensure_regenerates_the_bundled_default_without_a_cache(project, monkeypatch, capsys):  # noqa: F811
    code, out, err = run_cli(monkeypatch, capsys, "ingest")
    assert code == 0, err
    assert "5031 rows 1999-01-04..2018-12-31" in out
    tracked_file = (project / "data.dvc").read_bytes()
    csv = (project / "data" / "raw" / "SPY.csv").read_bytes()
    shutil.rmtree(project / "data" / "raw")
    shutil.rmtree(project / ".dvc" / "cache")  # a fresh clone: no cache, no remote
    code, out, err = run_cli(monkeypatch, capsys, "ingest", "--ensure")
    assert code == 0, err
    assert "regenerated data/raw from the bundled S&P 500" in out
    assert (project / "data" / "raw" / "SPY.csv").read_bytes() == csv
    assert (project / "data.dvc").read_bytes() == tracked_file
    assert _dvc_status(project) == {}


def test_ensure_takes_no_source(project, monkeypatch, capsys):  # noqa: F811
    code, _, err = run_cli(monkeypatch, capsys, "ingest", "--ensure", "--source", "x.csv")
    _assert_one_line_error(code, err, "--ensure restores the data tracked by data.dvc")


def test_read_raw_needs_ingest(project):  # noqa: F811
    with pytest.raises(TierHpoError, match=r"no raw data for SPY at .*; run `tierhpo ingest`"):
        ingest.read_raw("SPY")
    assert paths.raw_dir() == project / "data" / "raw"
