"""Promotion against a real MLflow registry: symbol in the names, short tags, idempotence, loading in a new process.

One module-level story promotes a sequence of real (tiny) studies of the same budget, the way
successive `tierhpo hpo` + `tierhpo promote` runs would, and the tests check what it left behind:
weak model (v1) -> same study again (no duplicate) -> strong model (v2) -> medium model (v3) ->
degenerate model (not registered); plus a budget whose model is worse than the best baseline
(registered, the comparison in its description). Promotion sets no alias (`tierhpo select` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from fake_study import HORIZON, TIER, make_study, point_at, project

from common import paths
from common.errors import TierHpoError
from pipelines import promote as pm
from training.budget import Architecture
from training.synthetic import synthetic_tier

ARCH = Architecture(n_layers=2, n_heads=2, d_ff_ratio=2.0, patch_len=4)
SYMBOL = "SYN"  # fake_study writes symbol SYN
NAME = pm.model_name(SYMBOL, TIER, HORIZON, "2K")
SECTIONS = {
    "promote": {"ci_method": "stationary", "ci_reps": 200, "ci_alpha": 0.05,
                "calibration": {"cv_folds": 3, "isotonic_min_samples": 1000}},
    "hpo": {"budgets": ["2K", "8K"]},
}


def write_baselines(val_auc: float) -> None:
    directory = paths.baselines_dir(TIER, HORIZON)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps({
        "vol": {"val/auc": val_auc - 0.04, "test/auc": val_auc - 0.05},
        "logreg": {"val/auc": val_auc - 0.02, "test/auc": val_auc - 0.03},
        "hgb": {"val/auc": val_auc, "test/auc": val_auc - 0.01},
    }))


def collapse(state: dict) -> dict:
    """A degenerate model: the head ignores its input, so every prediction is the same."""
    state = dict(state)
    state["head.weight"] = torch.zeros_like(state["head.weight"])
    state["head.bias"] = torch.full_like(state["head.bias"], -0.8)
    return state


def stash(name: str, library: Path, budget: str = "2K") -> Path:
    dest = library / name
    shutil.copytree(paths.study_dir(TIER, budget, HORIZON), dest)
    return dest


def install(saved: Path, budget: str = "2K") -> None:
    target = paths.study_dir(TIER, budget, HORIZON)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(saved, target)


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    root = tmp_path_factory.mktemp("promote")
    library = root / "library"
    with pytest.MonkeyPatch.context() as mp:
        point_at(root, mp)
        project(root / "proj", mp, SECTIONS)
        data = synthetic_tier(n_days=3000, n_features=6, context_len=16, horizon=HORIZON, seed=0, tier=TIER)
        studies = {}
        for label, kw in {"weak": dict(lr=3e-3, epochs=1, trial_number=1),
                          "strong": dict(lr=1e-2, epochs=6, trial_number=4),
                          "medium": dict(lr=3e-3, epochs=3, trial_number=7),
                          "degenerate": dict(lr=3e-3, epochs=1, trial_number=9, state_dict_hook=collapse)}.items():
            studies[label] = make_study(data, "2K", ARCH, study_name=f"a50-2K-h1-{label}", **kw)
            stash(label, library)
        studies["8K"] = make_study(data, "8K", Architecture(1, 2, 2.0, 4), lr=3e-3, epochs=1, trial_number=2)
        auc = {k: v["metrics"]["val/auc"] for k, v in studies.items()}
        # The story needs this ordering; it is a deterministic property of the fixture, checked here.
        assert auc["weak"] + 0.03 < auc["medium"] < auc["strong"] - 0.02, auc
        write_baselines(auc["weak"] - 0.03)

        cfg = pm.config.load(pm.PromoteConfig, "promote")
        runs = {}
        for step, label in [("weak", "weak"), ("weak_again", "weak"), ("strong", "strong"),
                            ("medium", "medium"), ("degenerate", "degenerate")]:
            install(library / label)
            runs[step] = pm.run_promote(TIER, HORIZON, ["2K"], cfg, data)["2K"]
            runs[step]["_files"] = {p.name: p.stat().st_size for p in (paths.promote_dir(TIER, HORIZON) / "2K").iterdir()}
        write_baselines(0.99)
        runs["8K"] = pm.run_promote(TIER, HORIZON, ["8K"], cfg, data)["8K"]
    return {"root": root, "data": data, "studies": studies, "runs": runs, "auc": auc}


@pytest.fixture
def registry(story, monkeypatch):
    point_at(story["root"], monkeypatch)
    monkeypatch.setenv("TIERHPO_ROOT", str(story["root"] / "proj"))
    return mlflow.MlflowClient(paths.mlflow_tracking_uri())


def versions(client, name=NAME):
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def test_first_version_carries_the_short_tags_and_no_alias(story, registry):
    weak = story["runs"]["weak"]
    assert NAME == "tierhpo-SYN-a50-h1-2K"
    assert weak["registry"]["version"] == 1 and weak["registry"]["alias"] is None
    v1 = registry.get_model_version(NAME, "1")
    tags, best = v1.tags, story["studies"]["weak"]
    assert tags["symbol"] == SYMBOL and registry.get_registered_model(NAME).tags["symbol"] == SYMBOL
    assert len(tags) <= 16
    assert tags["tier"] == TIER and tags["budget"] == "2K" and tags["horizon"] == str(HORIZON)
    assert tags["n_params"] == str(best["n_params"]) and 1800 <= int(tags["n_params"]) <= 2200
    assert tags["study_name"] == best["study_name"] and tags["trial_number"] == "1"
    assert tags["source_run_id"] == best["mlflow_run_id"]
    assert tags["git_commit"] == "fake-commit" and tags["raw_version"] == "fake-data"
    assert tags["calibrator"] in ("none", "temperature", "sigmoid")  # isotonic: 418 val windows < 1000
    for key in ("val/auc", "test/auc", "test/auc_ci_lo", "test/auc_ci_hi"):
        assert key in tags, key
    assert float(tags["val/auc"]) == pytest.approx(story["auc"]["weak"], abs=1e-6)
    assert "is not worse than the best baseline hgb" in v1.description and "tierhpo select" in v1.description
    assert not registry.get_registered_model(NAME).aliases
    assert v1.run_id == weak["mlflow_run_id"]
    run = registry.get_run(v1.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "promote"


def test_summary_reports_calibration_before_and_after_and_the_ci(story):
    s = story["runs"]["strong"]
    ci = s["test"]["auc_ci"]
    assert ci["lo"] <= ci["auc"] <= ci["hi"] and ci["method"] == "stationary" and s["test_evaluations"] == 1
    raw, cal = s["test"]["uncalibrated"], s["test"]["calibrated"]
    assert ci["auc"] == pytest.approx(raw["test/auc"])
    assert {"test/brier", "test/log_loss", "test/ece"} <= set(raw) and {"test/brier", "test/ece"} <= set(cal)
    if s["calibrator"]["method"] != "isotonic":
        assert cal["test/auc"] == pytest.approx(raw["test/auc"], abs=1e-12)
    assert s["calibrator"]["reason"].startswith(s["calibrator"]["method"])
    assert set(s["calibrator"]["val_log_loss"]) >= {"none", "temperature", "sigmoid"}
    files = s["_files"]
    assert {"summary.json", "metrics.json", "predictions.parquet", "reliability.png"} <= set(files)
    assert files["reliability.png"] > 5000


def test_outputs_on_disk_match_the_last_run(story, registry):
    out = paths.promote_dir(TIER, HORIZON) / "2K"
    preds = pd.read_parquet(out / "predictions.parquet")
    assert list(preds.columns) == ["date", "y", "p_raw", "p_cal"]
    assert len(preds) == len(story["data"].labels_of("test"))
    assert preds["p_cal"].between(0, 1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) or v is None for v in metrics.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study_name"] == "a50-2K-h1-degenerate"  # the last promotion of this budget


def test_rerunning_the_same_study_creates_no_duplicate(story, registry):
    again = story["runs"]["weak_again"]
    assert again["registry"]["version"] == 1 and again["registry"]["existing"] and not again["registry"]["registered"]
    keys = [v.tags["source_key"] for v in versions(registry)]
    assert len(keys) == len(set(keys)) == 3  # weak, strong, medium; the re-run and the degenerate added none


def test_promotion_decides_no_alias(story, registry):
    strong, medium = story["runs"]["strong"], story["runs"]["medium"]
    assert strong["registry"]["version"] == 2 and medium["registry"]["version"] == 3
    assert strong["registry"]["alias"] is None and medium["registry"]["alias"] is None
    assert all(v.aliases == [] for v in versions(registry))
    assert all(pm.model_name("OTHER", TIER, HORIZON, "2K") != v.name for v in versions(registry))


def test_degenerate_model_is_never_registered(story, registry):
    deg = story["runs"]["degenerate"]
    assert deg["degenerate"] and "collapsed" in deg["degenerate"]
    assert deg["registry"]["version"] is None and deg["registry"]["decision"].startswith("not registered: degenerate")
    assert all("degenerate" not in v.tags["study_name"] for v in versions(registry))


def test_model_worse_than_the_best_baseline_says_so_in_its_description(story, registry):
    r = story["runs"]["8K"]
    name = pm.model_name(SYMBOL, TIER, HORIZON, "8K")
    assert r["registry"]["version"] == 1 and r["registry"]["alias"] is None
    description = registry.get_model_version(name, "1").description
    assert "worse than the best baseline hgb (0.9900)" in description
    assert not registry.get_registered_model(name).aliases


def test_registered_version_loads_in_a_new_process_and_predicts(story, registry, tmp_path):
    data = story["data"]
    idx = data.window_index("test")[:5]  # (5, L) rows of the first five test windows
    raw = data.features[idx] * data.std + data.mean  # the served model takes raw (unscaled) features
    frame = pd.DataFrame(raw.reshape(-1, data.n_features), columns=list(data.feature_names))
    frame["window_id"] = np.repeat(np.arange(5), data.context_len)
    frame.to_json(tmp_path / "windows.json", orient="split")
    code = (
        "import json, sys, pandas as pd, mlflow\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}/2')\n"
        "print(json.dumps([float(p) for p in m.predict(pd.read_json(sys.argv[1], orient='split'))['probability']]))\n"
    )
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "windows.json")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    served = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    # Version 2 is the strong study's model with the calibrator its promotion chose.
    np.testing.assert_allclose(served, _strong_predictions(story)[:5], rtol=1e-5, atol=1e-7)


def _strong_predictions(story) -> np.ndarray:
    """Calibrated test predictions of the strong model, recomputed in this process from its files."""
    from evaluation.calibration import Calibrator
    from training.inference import predict_logits
    from training.study_record import Study

    best = story["studies"]["strong"]
    study = Study(TIER, "2K", HORIZON, story["root"] / "library" / "strong", best)
    logits = predict_logits(study.model_config(), study.state_dict(), story["data"], "test", device="cpu")
    return Calibrator.from_dict(story["runs"]["strong"]["calibrator"]).apply(logits)


def test_a_best_json_from_before_the_rename_still_gives_its_raw_version(tmp_path):
    from training.study_record import Study

    def study(best: dict) -> Study:
        return Study(TIER, "2K", HORIZON, tmp_path, best)

    assert study({"raw_version": "new", "data_version": "old"}).raw_version == "new"
    assert study({"data_version": "old"}).raw_version == "old"  # written before raw_version existed
    assert study({}).raw_version is None


def test_missing_inputs_are_one_line_errors(tmp_path, monkeypatch):
    project(tmp_path / "proj", monkeypatch, SECTIONS)
    with pytest.raises(TierHpoError, match=r"tierhpo hpo --tier a50 --budget 2K --horizon 1"):
        pm.run_promote(TIER, HORIZON, ["2K"], pm.PromoteConfig(), None)
    with pytest.raises(TierHpoError, match=r"tierhpo baselines --tier a50 --horizon 1"):
        pm.read_baselines(TIER, HORIZON)
    with pytest.raises(TierHpoError, match="ci_method"):
        pm.config.build(pm.PromoteConfig, {"ci_method": "wald"})
