"""`tierhpo predict` and `tierhpo dashboard` against a real (tiny, untrained) registered model.

The model is registered the way `tierhpo promote` registers one (the pyfunc from code, with the
serving spec of a real tier's input columns) and aliased the way `tierhpo select` aliases the
grid model (`tierhpo-SYN-h1@champion`), in a real MLflow SQLite store under tmp_path.
"""

from __future__ import annotations

import sys
import traceback

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from fake_study import point_at, project

from common import paths
from evaluation.calibration import Calibrator
from pipelines import dashboard
from pipelines.ohlcv import bundled_sp500, canonical_ohlcv
from training.features import compute_features
from training.inputs import input_columns, stationary_base
from training.model import ModelConfig, PatchTSTClassifier
from training.recent import feature_window, history_needed, warmup_rows
from training.serving import ServingSpec, model_kwargs

TIER, L, NAME = "a20", 16, "tierhpo-SYN-h1"
NEED = history_needed(TIER, L)


def sp500_raw() -> pd.DataFrame:
    """The bundled S&P 500 as a user's file has it: Date, Open, High, Low, Close, Adj Close, Volume."""
    frame = bundled_sp500()
    return frame.rename(columns={frame.columns[0]: "Date"})


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        point_at(root, mp)
        project(root / "proj", mp, {"tiers": {"use_adjusted": True}})
        ohlcv = canonical_ohlcv(sp500_raw())
        cols = list(input_columns(TIER))
        feats = pd.concat([stationary_base(ohlcv), compute_features(ohlcv)], axis=1)[cols].iloc[warmup_rows(TIER):]
        std = feats.std().replace(0, 1.0)
        torch.manual_seed(0)
        cfg = ModelConfig(n_features=len(cols), context_len=L, patch_len=4, d_model=8, n_layers=1, n_heads=2, d_ff=16)
        weights = root / "model.pt"
        torch.save(PatchTSTClassifier(cfg).eval().state_dict(), weights)
        spec = ServingSpec(model_config=cfg.to_dict(), feature_names=cols, mean=feats.mean().tolist(),
                           std=std.tolist(), context_len=L, calibrator=Calibrator("sigmoid", {"a": -1.0, "b": 0.1}).to_dict(),
                           info={"tier": TIER, "budget": "1K", "horizon": 1})
        with paths.mlflow_fluent_tracking() as uri:
            client = mlflow.MlflowClient(uri)
            # Its own experiment: MLflow's Default one keeps artifacts in ./mlruns of the current directory.
            experiment = client.create_experiment("predict-test", artifact_location=paths.mlflow_artifact_root())
            with mlflow.start_run(experiment_id=experiment):
                info = mlflow.pyfunc.log_model(name="model", **model_kwargs(spec, weights, root / "staging"))
            mv = mlflow.register_model(info.model_uri, NAME, tags={"tier": TIER, "horizon": "1", "symbol": "SYN"})
            client.set_registered_model_alias(NAME, "champion", mv.version)
    return root


@pytest.fixture
def project_env(registered, monkeypatch):
    point_at(registered, monkeypatch)
    monkeypatch.setenv("TIERHPO_ROOT", str(registered / "proj"))
    return registered


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from pipelines.cli import app

    monkeypatch.setattr(sys, "argv", ["tierhpo", *args])
    code, crash = 0, ""
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  (reported by the assertions)
        code, crash = 1, traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out, err + crash


def write_csv(tmp_path, frame: pd.DataFrame, name: str = "recent.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_history_needed_is_warmup_plus_context():
    assert warmup_rows("a20") == 199 and warmup_rows("a100") == 252  # sma_ratio_200, ret_252/rv_252
    assert NEED == 199 + L


def test_predict_prints_the_newest_day_and_a_probability(project_env, tmp_path, monkeypatch, capsys):
    recent = sp500_raw().tail(NEED)
    source = write_csv(tmp_path, recent)
    last = f"{pd.Timestamp(recent['Date'].iloc[-1]):%Y-%m-%d}"
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--source", str(source))
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"predict: {last}: probability ")
    p = float(line.split("probability ")[1].split()[0])
    assert 0 < p < 1
    assert f"models:/{NAME}@champion = version 1" in line and "tier a20" in line and "max_excess_z" in line
    code, out2, err = run_cli(monkeypatch, capsys, "predict", "--source", str(source), "--model", f"models:/{NAME}/1")
    assert code == 0, err
    assert f"probability {p:.4f}" in out2 and f"models:/{NAME}/1 = version 1" in out2


def test_the_window_matches_the_tier_pipeline():
    from pipelines.tiers import build_tier
    from training.dataset import DataConfig
    from training.inputs import TiersConfig

    ohlcv = canonical_ohlcv(sp500_raw())
    frame = build_tier(ohlcv, TIER, DataConfig(context_len=L), TiersConfig(), "SPY")[0].set_index("date")
    window = feature_window(ohlcv.iloc[2000 - NEED:2000], TIER, L)
    assert len(window) == L and window.index[-1] == ohlcv["date"].iloc[1999]
    ref = frame.loc[window.index, list(input_columns(TIER))]
    np.testing.assert_allclose(window.to_numpy(), ref.to_numpy(), rtol=1e-6, atol=1e-9)


def test_one_day_too_few_names_the_days_needed(project_env, tmp_path, monkeypatch, capsys):
    source = write_csv(tmp_path, sp500_raw().tail(NEED - 1))
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--source", str(source))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"{NEED - 1} days of history, need at least {NEED}" in err and "Traceback" not in err


def text_close(frame: pd.DataFrame) -> pd.DataFrame:
    frame["Close"] = frame["Close"].astype(object)
    frame.iloc[5, frame.columns.get_loc("Close")] = "abc"
    return frame


def high_below_low(frame: pd.DataFrame) -> pd.DataFrame:
    frame.iloc[7, frame.columns.get_loc("High")] = frame["Low"].iloc[7] * 0.9
    return frame


@pytest.mark.parametrize("damage, expect", [(text_close, "non-numeric value 'abc' in column 'close', row 6"),
                                            (high_below_low, "high < low on 1 day(s)")])
def test_bad_rows_are_one_line(damage, expect, project_env, tmp_path, monkeypatch, capsys):
    source = write_csv(tmp_path, damage(sp500_raw().tail(NEED).copy()))
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--source", str(source))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expect in err, err


def test_missing_model_and_bad_uri_are_one_line(project_env, tmp_path, monkeypatch, capsys):
    source = write_csv(tmp_path, sp500_raw().tail(NEED))
    for args, expect in [(["--horizon", "5"], "no model models:/tierhpo-SYN-h5@champion or @candidate"),
                         (["--model", "runs:/abc/model"], "give models:/NAME@ALIAS or models:/NAME/VERSION"),
                         (["--model", f"models:/{NAME}@nosuch"], f"model models:/{NAME}@nosuch not found")]:
        code, out, err = run_cli(monkeypatch, capsys, "predict", "--source", str(source), *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (args, err)


def test_dashboard_refuses_a_missing_storage(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope" / "optuna.db"
    monkeypatch.setenv("TIERHPO_OPTUNA_STORAGE", f"sqlite:///{missing}")
    code, out, err = run_cli(monkeypatch, capsys, "dashboard", "--port", "8099")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"no Optuna storage at {missing}" in err, err
    assert dashboard.sqlite_file("postgresql://u@h/db") is None
    assert dashboard.dashboard_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/"


def test_dashboard_serves_an_existing_storage_and_stops(tmp_path):
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=url, study_name="a20-1K-h1-x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TIERHPO_OPTUNA_STORAGE": url}
    proc = subprocess.Popen([sys.executable, "-c", "from pipelines.cli import app; app()", "dashboard", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status is None and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as answer:
                    status = answer.status
            except OSError:
                time.sleep(0.5)
        assert status == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"dashboard: {url} at http://127.0.0.1:{port}/" in out
