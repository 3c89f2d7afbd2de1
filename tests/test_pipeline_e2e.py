"""The whole product on the tiny profile, in a throwaway git copy of the repo with its own stores.

The ways users drive it: ``mlflow run . -P tier=a50`` (which runs the tier batch, i.e.
``dvc repro`` of the tier's stages), a second ``dvc repro`` that does nothing, reproducing a
tagged result from scratch, and the batch resuming after a SIGKILL. The steps share one
repository copy because each costs a pipeline run; they are written to run in file order (the
tag is taken before the kill, whose failed trial is part of the study's history).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import http_serving
import optuna
import pytest
import yaml
from conftest import copy_repo
from mlflow.tracking import MlflowClient
from shrink import shrink

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def make_env(stores: Path) -> dict[str, str]:
    stores.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TIERHPO_STORE_DIR": str(stores),
        "MLFLOW_TRACKING_URI": f"sqlite:///{stores / 'mlflow.db'}",
        "TIERHPO_OPTUNA_STORAGE": f"sqlite:///{stores / 'optuna.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "TIERHPO_ROOT"):
        env.pop(var, None)
    return env


def sh(cmd: list[str], repo: Path, env: dict[str, str], timeout: int = 1200) -> str:
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def git(repo: Path, *args: str) -> str:
    return sh(["git", *args], repo, {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                     "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, changes in sections.items():
        params[section].update(changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_metrics(repo: Path, env: dict[str, str]) -> dict:
    return json.loads(sh(["dvc", "metrics", "show", "--json"], repo, env))


def studies(env: dict[str, str]) -> list[optuna.Study]:
    url = env["TIERHPO_OPTUNA_STORAGE"]
    return [optuna.load_study(study_name=s.study_name, storage=url) for s in optuna.get_all_study_summaries(url)]


def running_runs(env: dict[str, str]) -> list[str]:
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(experiments, "attributes.status = 'RUNNING'")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    repo = copy_repo(root / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(shrink(params), sort_keys=False))
    git(repo, "commit", "-qam", "tiny profile")
    env = make_env(root / "stores")
    # A fresh clone has no DVC cache: ingest --ensure regenerates data/raw and checks data.dvc's hash.
    sh([str(BIN / "tierhpo"), "ingest", "--ensure"], repo, env)
    return SimpleNamespace(repo=repo, root=root, env=env)


def test_mlflow_run_runs_the_grid_with_nested_runs_and_one_candidate(tiny):
    sh([str(BIN / "mlflow"), "run", ".", "--env-manager", "local"], tiny.repo, tiny.env)

    client = MlflowClient(tiny.env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    outer = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "main"]
    assert len(outer) == 1 and outer[0].info.status == "FINISHED"
    assert not any(k.startswith("model.") for k in outer[0].data.params), "a stage's nested runs logged into the outer run"
    cells = [r for r in runs if "source_budget" in r.data.tags]
    assert cells and all(r.data.tags["mlflow.parentRunId"] != outer[0].info.run_id for r in cells)
    parents = [r for r in runs if "study_name" in r.data.tags and "trial_number" not in r.data.tags]
    assert {(r.data.tags["tier"], r.data.tags["budget"]) for r in parents} == {
        (t, b) for t in ("a20", "a50") for b in ("20K", "40K")}
    for parent in parents:
        assert parent.data.tags["mlflow.parentRunId"] == outer[0].info.run_id
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                    and "trial_number" in r.data.tags]
        finished = [r for r in children if r.info.status == "FINISHED"]
        assert len(finished) >= 3 and all("best/val/auc" in r.data.metrics for r in finished)
    assert not running_runs(tiny.env)
    for tier in ("a20", "a50"):
        for budget in ("20K", "40K"):
            assert client.get_registered_model(f"tierhpo-SPY-{tier}-h1-{budget}").latest_versions
    verdicts = json.loads((tiny.repo / "results" / "select" / "h1" / "verdicts.json").read_text())
    candidate = client.get_model_version_by_alias("tierhpo-SPY-h1", "candidate")
    assert (candidate.tags["tier"], candidate.tags["budget"]) == (verdicts["best"]["tier"], verdicts["best"]["budget"])
    aliases = client.get_registered_model("tierhpo-SPY-h1").aliases
    assert ("champion" in aliases) == verdicts["gate"]["passed"]
    summary = (tiny.repo / "reports" / "summary.md").read_text()
    assert f"{verdicts['best']['tier']}/{verdicts['best']['budget']}" in summary or verdicts["best"]["tier"] in summary
    served = sh([sys.executable, "-c", SERVE_CANDIDATE, str(tiny.root / "window.json")], tiny.repo, tiny.env)
    probs = json.loads(next(line for line in served.splitlines() if line.startswith("PROBS "))[6:])
    assert len(probs) == 3 and all(0 < p < 1 for p in probs)
    # The README's command: `mlflow models serve` of the symbol's alias answers over HTTP, the same numbers.
    window = json.loads((tiny.root / "window.json").read_text())
    with http_serving.served("models:/tierhpo-SPY-h1@candidate", BIN, tiny.repo, tiny.env, tiny.root / "serve.log") as url:
        answer = http_serving.post_json(f"{url}/invocations", window)
    assert [row["probability"] for row in answer["predictions"]] == pytest.approx(probs, rel=1e-6)
    assert "up to date" in sh(["dvc", "status"], tiny.repo, tiny.env)


# The README's serving path: the grid's candidate, loaded by alias, on raw tier rows of three windows.
SERVE_CANDIDATE = """
import json, sys, numpy as np, pandas as pd, mlflow
from training.dataset import load_tier
mv = mlflow.MlflowClient().get_model_version_by_alias("tierhpo-SPY-h1", "candidate")
data = load_tier("SPY", mv.tags["tier"], 1)
idx = data.window_index("test")[:3]
raw = data.features[idx] * data.std + data.mean
frame = pd.DataFrame(raw.reshape(-1, data.n_features), columns=list(data.feature_names))
frame["window_id"] = np.repeat(np.arange(3), data.context_len)
model = mlflow.pyfunc.load_model("models:/tierhpo-SPY-h1@candidate")
print("PROBS", json.dumps([float(p) for p in model.predict(frame)["probability"]]))
json.dump({"dataframe_split": frame.to_dict(orient="split")}, open(sys.argv[1], "w"))
"""


def test_second_dvc_repro_does_nothing(tiny):
    out = sh(["dvc", "repro"], tiny.repo, tiny.env)
    assert "Running stage" not in out, out


def test_tagged_result_is_recomputed_exactly_from_scratch(tiny):
    repo, env = tiny.repo, tiny.env
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny results")
    git(repo, "tag", "tiny-v1")
    tagged = dvc_metrics(repo, env)

    set_params(repo, select={"seed": 1})  # new bootstrap draws: the grid's intervals and SPA p change
    sh(["dvc", "repro"], repo, env)
    assert dvc_metrics(repo, env) != tagged, "changing a param should change some metric"
    git(repo, "commit", "-qam", "another seed")

    git(repo, "checkout", "-q", "tiny-v1")
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
    fresh = make_env(tiny.root / "fresh-stores")
    sh(["dvc", "repro", "--force"], repo, fresh)  # recomputes every stage; nothing restored from cache
    assert dvc_metrics(repo, fresh) == tagged


def test_batch_resumes_after_sigkill(tiny):
    git(tiny.repo, "checkout", "-qf", "main")  # back from the tag; DVC re-runs what the checkout made stale
    set_params(tiny.repo, hpo={"trials": 4})  # the study name excludes the trial count: it resumes
    batch = subprocess.Popen([str(BIN / "tierhpo"), "batch"], cwd=tiny.repo, env=tiny.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and batch.poll() is None:
            if any(t.state == optuna.trial.TrialState.RUNNING and t.number >= 3
                   for s in studies(tiny.env) for t in s.trials):
                break
            time.sleep(0.5)
        assert batch.poll() is None, "the batch finished before it could be interrupted"
        os.killpg(batch.pid, signal.SIGKILL)
        batch.wait(timeout=30)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)

    out = sh([str(BIN / "tierhpo"), "batch"], tiny.repo, tiny.env)
    assert "[batch 1/" in out and "budget 1/4" in out
    for study in studies(tiny.env):
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        assert len(complete) == 4, study.study_name
    assert not running_runs(tiny.env)
    assert "up to date" in sh(["dvc", "status"], tiny.repo, tiny.env)
