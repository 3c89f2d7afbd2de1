"""tierhpo validate: the Great Expectations suites pass a good tier and name every broken rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_ohlcv
from data_project import VALIDATE, light_project, run_cli, write_params  # noqa: F401

from common import paths
from common.errors import TierHpoError
from pipelines import ingest
from training.dataset import load_tier
from training.validation_record import details_dir, ensure_validated, summary_path


@pytest.fixture
def tier(light_project, monkeypatch, capsys):  # noqa: F811
    """Tier a20 of make_ohlcv(800), built by the tiers stage."""
    raw = light_project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "SPY.csv").write_bytes(ingest.render_csv(ingest.canonical_ohlcv(make_ohlcv(800))))
    code, _, err = run_cli(monkeypatch, capsys, "tiers", "--tier", "a20")
    assert code == 0, err
    return light_project


def _rewrite(mutate) -> None:
    path = paths.tier_path("SPY", "a20")
    frame = pd.read_parquet(path)
    frame = mutate(frame)
    frame.to_parquet(path, index=False)


def test_a_good_tier_passes_and_unlocks_load_tier(tier, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "validate", "--tier", "a20")
    assert code == 0, err
    assert "all 121 expectations passed" in out  # 113 on the table + 4 on the splits + 4 label recomputations
    summary = json.loads(summary_path("SPY", "a20").read_text())
    assert summary["success"] and summary["expectations"]["table"]["evaluated_expectations"] == 113
    assert set(summary["positive_rate"]) == {"h1", "h2", "h3", "h5"}
    assert json.loads((details_dir("SPY", "a20") / "result.json").read_text())["success"] is True
    assert load_tier("SPY", "a20", 1, require_validated=True).n_features == 25
    _rewrite(lambda f: f.assign(ret_1=f["ret_1"] * 1.0000001))  # any change invalidates the record
    with pytest.raises(TierHpoError, match="SPY_a20 changed since it was validated"):
        ensure_validated("SPY", "a20")


def test_broken_values_are_listed_with_offending_rows(tier, monkeypatch, capsys):
    summary_path("SPY", "a20").parent.mkdir(parents=True)
    summary_path("SPY", "a20").write_text('{"success": true}')  # a stale success record ...
    write_params(tier, validate={**VALIDATE, "data_docs": True})

    def corrupt(f: pd.DataFrame) -> pd.DataFrame:
        f.loc[10, "rv_5"] = np.nan
        f.loc[11, "macd" if "macd" in f else "rsi_14"] = np.inf
        f.loc[12, "high"] = f.loc[12, "open"] * 0.9
        f.loc[13, "target_h1"] = 2
        f.loc[14, "volume"] = -1.0
        f.loc[15, "close"] = 0.0
        f.loc[16, "date"] = f.loc[15, "date"]
        return f

    _rewrite(corrupt)
    code, _, err = run_cli(monkeypatch, capsys, "validate", "--tier", "a20")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tierhpo: error: SPY_a20 failed validation; full result in reports/validation/SPY_a20")
    frame = pd.read_parquet(paths.tier_path("SPY", "a20"))
    day = {i: frame["date"].iloc[i].strftime("%Y-%m-%d") for i in range(10, 17)}
    failed = "\n".join(lines)
    expected = [
        f"expect_column_values_to_not_be_null(column=rv_5): 1 of {len(frame)} rows e.g. (date={day[10]}, rv_5=None)",
        f"expect_column_values_to_be_between(column=rsi_14, min_value=-1e+12, max_value=1e+12): 1 of {len(frame)} rows e.g. (date={day[11]}, rsi_14=inf)",
        f"expect_column_pair_values_a_to_be_greater_than_b(column_A=high, column_B=open, or_equal=True): 1 of {len(frame)} rows e.g. (date={day[12]}",
        f"expect_column_values_to_be_in_set(column=target_h1, value_set=[0, 1]): 1 of {len(frame)} rows e.g. (date={day[13]}, target_h1=2)",
        f"expect_column_values_to_be_between(column=volume, min_value=0): 1 of {len(frame)} rows e.g. (date={day[14]}, volume=-1)",
        f"expect_column_values_to_be_between(column=close, min_value=0, strict_min=True): 1 of {len(frame)} rows e.g. (date={day[15]}, close=0)",
        "expect_column_values_to_be_increasing(column=date, strictly=True)",
        "expect_column_values_to_be_unique(column=date): 2 of",
    ]
    for text in expected:
        assert text in failed, text
    assert not summary_path("SPY", "a20").exists()  # ... is removed, so nothing downstream runs
    details = details_dir("SPY", "a20")
    result = json.loads((details / "result.json").read_text())
    assert result["success"] is False and not result["suites"]["table"]["success"]
    assert (details / "data_docs" / "index.html").is_file()


def test_schema_dtypes_and_positive_rates(tier, monkeypatch, capsys):
    write_params(tier, validate={**VALIDATE, "positive_rate_max": 0.3})

    def corrupt(f: pd.DataFrame) -> pd.DataFrame:
        f = f.drop(columns=["rsi_14"])
        f["day_of_week"] = f["day_of_week"].astype(np.int64)
        f["extra"] = 1.0
        return f

    _rewrite(corrupt)
    code, _, err = run_cli(monkeypatch, capsys, "validate", "--tier", "a20")
    assert code == 2
    assert "expect_table_columns_to_match_ordered_list" in err and "missing ['rsi_14'], unexpected ['extra']" in err
    assert "expect_column_values_to_be_in_type_list(column=day_of_week, type_list=['float64', 'float32'])" in err
    meta = json.loads(paths.splits_path("SPY", "a20").read_text())
    too_high = [(h, s) for h, sp in meta["splits"].items() for s, b in sp.items() if b["positive_rate"] > 0.3]
    assert too_high  # h5 positives are far above 30 % on this data
    line = next(x for x in err.splitlines() if "column=positive_rate, min_value=0.02, max_value=0.3" in x)
    assert f"{len(too_high)} of 12 rows" in line
    h, s = too_high[0]
    assert f"(horizon={h[1:]}, split={s}, positive_rate=" in line


def test_missing_tier_and_unknown_tier(light_project, monkeypatch, capsys):  # noqa: F811
    code, _, err = run_cli(monkeypatch, capsys, "validate", "--tier", "a20")
    assert code == 2 and "no tier dataset at" in err and "tierhpo tiers --tier a20" in err
    code, _, err = run_cli(monkeypatch, capsys, "validate", "--tier", "b50")
    assert code == 2 and err.strip() == "tierhpo: error: unknown tier 'b50'; choose one of a20, a50, a100"
