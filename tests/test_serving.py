"""The served pyfunc: raw windows in, calibrated probabilities out, in a fresh process and over HTTP."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from http_serving import post_json, served
from mlflow.exceptions import MlflowException

from common import paths
from evaluation.calibration import Calibrator
from training.model import ModelConfig, PatchTSTClassifier
from training.serving import WINDOW_ID, ServingSpec, TierHpoPyfunc, model_kwargs

FEATURES = ["ret_1d", "vol_5d", "range_hl"]
L = 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[ServingSpec, Path, PatchTSTClassifier]:
    torch.manual_seed(0)
    cfg = ModelConfig(n_features=3, context_len=L, patch_len=4, d_model=8, n_layers=1, n_heads=2, d_ff=16)
    net = PatchTSTClassifier(cfg).eval()
    weights = tmp_path_factory.mktemp("w") / "model.pt"
    torch.save(net.state_dict(), weights)
    spec = ServingSpec(
        model_config=cfg.to_dict(), feature_names=FEATURES, mean=[0.001, 0.02, 1.5], std=[0.01, 0.005, 0.3],
        context_len=L, calibrator=Calibrator("sigmoid", {"a": -1.7, "b": 0.4}).to_dict(),
        info={"tier": "a20", "budget": "1K"},
    )
    return spec, weights, net


def raw_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "ret_1d": rng.normal(0.001, 0.01, n), "vol_5d": rng.normal(0.02, 0.005, n), "range_hl": rng.normal(1.5, 0.3, n),
    })


def expected(spec: ServingSpec, net: PatchTSTClassifier, windows: np.ndarray) -> np.ndarray:
    """Independent reference: standardise, run the network, apply Platt by its formula."""
    x = (windows - np.array(spec.mean)) / np.array(spec.std)
    with torch.no_grad():
        z = net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    a, b = spec.calibrator["params"]["a"], spec.calibrator["params"]["b"]
    return 1 / (1 + np.exp(a * z + b))


@pytest.fixture(scope="module")
def saved_model(tiny_model, tmp_path_factory) -> Path:
    spec, weights, _ = tiny_model
    work = tmp_path_factory.mktemp("saved")
    path = work / "model"
    mlflow.pyfunc.save_model(str(path), **model_kwargs(spec, weights, work / "staging"))
    return path


def test_one_window_and_a_batch_of_windows(tiny_model, saved_model):
    spec, _, net = tiny_model
    model = mlflow.pyfunc.load_model(str(saved_model))
    one = raw_rows(L)
    p_one = model.predict(one)["probability"].to_numpy()
    np.testing.assert_allclose(p_one, expected(spec, net, one.to_numpy()[None]), rtol=1e-5)

    batch = pd.concat([raw_rows(L, seed=s).assign(**{WINDOW_ID: s}) for s in (7, 3, 5)], ignore_index=True)
    p = model.predict(batch)["probability"].to_numpy()
    ref = expected(spec, net, np.stack([raw_rows(L, seed=s).to_numpy() for s in (7, 3, 5)]))
    np.testing.assert_allclose(p, ref, rtol=1e-5)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))


def test_numpy_windows_give_the_same_answer(tiny_model, saved_model):
    spec, weights, net = tiny_model
    model = TierHpoPyfunc()
    model.load(saved_model / "artifacts" / "spec.json", weights)
    windows = np.stack([raw_rows(L, seed=s).to_numpy() for s in range(4)])
    np.testing.assert_allclose(model.predict(None, windows)["probability"], expected(spec, net, windows), rtol=1e-5)


def test_a_seed_ensemble_serves_the_calibrated_mean_logit(tiny_model, saved_model, tmp_path):
    """refit.pt ({"seed_<s>": state_dict}) is served as one model: the members' logits averaged, then calibrated."""
    spec, _, net = tiny_model
    torch.manual_seed(1)
    other = PatchTSTClassifier(ModelConfig.from_dict(spec.model_config)).eval()
    torch.save({"seed_11": net.state_dict(), "seed_22": other.state_dict()}, tmp_path / "refit.pt")
    model = TierHpoPyfunc().load(saved_model / "artifacts" / "spec.json", tmp_path / "refit.pt")
    windows = np.stack([raw_rows(L, seed=s).to_numpy() for s in range(4)])
    x = torch.tensor((windows - np.array(spec.mean)) / np.array(spec.std), dtype=torch.float32)
    with torch.no_grad():
        z = (net(x).double().numpy() + other(x).double().numpy()) / 2
    a, b = spec.calibrator["params"]["a"], spec.calibrator["params"]["b"]
    np.testing.assert_allclose(model.predict(None, windows)["probability"], 1 / (1 + np.exp(a * z + b)), rtol=1e-5)
    assert len(model.nets) == 2


def test_windows_far_outside_the_training_range_are_flagged_not_refused(tiny_model, saved_model):
    spec, _, net = tiny_model
    model = mlflow.pyfunc.load_model(str(saved_model))
    normal = raw_rows(L, seed=1)
    far = raw_rows(L, seed=2)
    far.loc[3, "range_hl"] = 1.5 + 34 * 0.3  # |z| = 34, as raw prices of another market were
    batch = pd.concat([normal.assign(**{WINDOW_ID: 0}), far.assign(**{WINDOW_ID: 1})], ignore_index=True)
    out = model.predict(batch)
    assert list(out.columns) == ["probability", "outside_training_range", "max_excess_z"]
    assert out["outside_training_range"].tolist() == [False, True]
    assert out["max_excess_z"].iloc[1] == pytest.approx(34.0)
    assert out["max_excess_z"].iloc[0] < spec.z_limit
    ref = expected(spec, net, np.stack([normal.to_numpy(), far.to_numpy()]))
    np.testing.assert_allclose(out["probability"], ref, rtol=1e-5)  # still answered


def test_bad_windows_are_refused_clearly(saved_model):
    model = mlflow.pyfunc.load_model(str(saved_model))
    with pytest.raises(MlflowException, match="exactly context_len=8 rows"):
        model.predict(raw_rows(L + 1))
    bad = raw_rows(L)
    bad.loc[2, "vol_5d"] = np.nan
    with pytest.raises(MlflowException, match="finite"):
        model.predict(bad)
    with pytest.raises(MlflowException):
        model.predict(raw_rows(L).drop(columns=["range_hl"]))


def test_model_loads_from_code_without_pickles(saved_model):
    files = [p.name for p in saved_model.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    mlmodel = (saved_model / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel


@pytest.mark.slow
def test_registered_model_is_served_over_http(tiny_model, tmp_path):
    """`mlflow models serve models:/...@champion --env-manager local` answers /invocations."""
    spec, weights, net = tiny_model
    client = mlflow.MlflowClient()
    # An explicit artifact location: the SQLite store's default would be ./mlruns in the cwd.
    experiment = client.create_experiment("serving-test", artifact_location=paths.mlflow_artifact_root())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", **model_kwargs(spec, weights, tmp_path / "staging"))
    version = mlflow.register_model(info.model_uri, "tierhpo-a20-h1-1K")
    client.set_registered_model_alias("tierhpo-a20-h1-1K", "champion", version.version)

    venv_bin = Path(sys.executable).parent
    with served("models:/tierhpo-a20-h1-1K@champion", venv_bin, tmp_path, dict(os.environ), tmp_path / "serve.log") as url:
        batch = pd.concat([raw_rows(L, seed=s).assign(**{WINDOW_ID: s}) for s in range(3)], ignore_index=True)
        answer = post_json(f"{url}/invocations", {"dataframe_split": batch.to_dict(orient="split")})
        p = np.asarray([row["probability"] for row in answer["predictions"]], dtype=np.float64)
        assert not any(row["outside_training_range"] for row in answer["predictions"])
        assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
        ref = expected(spec, net, np.stack([raw_rows(L, seed=s).to_numpy() for s in range(3)]))
        np.testing.assert_allclose(p, ref, rtol=1e-5)
        with pytest.raises(urllib.error.HTTPError) as bad:  # a short window is a client error, not a crash
            post_json(f"{url}/invocations", {"dataframe_split": raw_rows(3).to_dict(orient="split")})
        assert bad.value.code == 400
