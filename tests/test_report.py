"""The report stage on a tiny finished pipeline: real Optuna SQLite studies, a real MLflow store,
and the HPO / promote / cross-budget / baseline files in their documented layout."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from scipy import stats as st
from typer.testing import CliRunner

from evaluation import plots, stats
from common import paths
from pipelines import cli, report
from common.errors import TierHpoError

REPO = Path(__file__).resolve().parents[1]
TIER, H = "a50", 1
BUDGETS = {"2K": 2_050, "20K": 19_800, "200K": 201_300}
SPACE = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "depth": IntDistribution(1, 4),
    "batch_size": CategoricalDistribution([32, 64, 128]),
}
N_TEST = 300
TEST_AUCS = {"2K": 0.58, "20K": 0.74, "200K": 0.90}  # clearly monotonic
SECTIONS = ("### HPO results", "### Coverage", "### Parameter importance", "### HP consistency across budgets",
            "### Scaling verdict", "### Calibration", "### Baselines")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(budget: str, rng: np.random.Generator, storage: str) -> optuna.Study:
    """Trials as the HPO engine (training.search) leaves them: forced then TPE/coverage phases, one
    failed, one pruned late, one degenerate, one void; the study's coverage snapshot says that
    depth 4 with batch size 128 is unreachable. Built in memory, then copied into SQLite in one go."""
    study = optuna.create_study(direction="maximize")
    for i in range(11):
        trial = study.ask(SPACE)
        trial.set_user_attr("phase", "forced" if i < 3 else ("coverage" if i == 8 else "tpe"))
        if i == 10:  # claimed by a worker and given back unrun: counted nowhere
            trial.set_user_attr("void", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        for epoch in range(3):
            trial.report(0.55 + 0.01 * epoch + 0.002 * i, epoch)
        trial.set_user_attr("info", {"epochs": 3, "timing": {"total_s": 2.0 + i}})
        if i == 5:  # died before recording anything: the engine counts it as failed
            trial.set_user_attr("fail_reason", "RuntimeError: NaN loss at epoch 2")
            study.tell(trial, state=TrialState.FAIL)
        elif i == 7:
            trial.set_user_attr("wasted", "late_pruned")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("wasted", "degenerate" if i == 2 else None)
            value = 0.62 - 0.02 * abs(np.log10(trial.params["lr"]) + 3.5) + 0.003 * i + rng.normal(0, 0.002)
            study.tell(trial, float(value) + (0.05 if i == 2 else 0.0))  # the degenerate one never wins
    axes = {name: {"params": [name], "shape": [n], "occupied": [], "empty": [[b] for b in range(n)]}
            for name, n in (("lr", 5), ("dropout", 5), ("depth", 4), ("batch_size", 3))}
    axes["depth.batch_size"] = {"params": ["depth", "batch_size"], "shape": [4, 3], "occupied": [],
                                "empty": [[i, j] for i in range(4) for j in range(3) if (i, j) != (3, 2)]}
    study.set_user_attr("coverage", {"overall": 0.8, "n_points": 9, "axes": axes})
    name = f"{TIER}-{budget}-h{H}-0123abcd"
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage, to_storage=storage,
                      to_study_name=name)
    return optuna.load_study(study_name=name, storage=storage)


def scores_for(auc: float, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logit = np.sqrt(2) * st.norm.ppf(auc) * y + rng.standard_normal(len(y)) - 0.5
    return 1 / (1 + np.exp(-logit))


def build_pipeline(test_aucs: dict[str, float], *, seed: int = 0) -> None:
    """Write a finished tiny pipeline for tier a50, horizon 1 into the current root and stores."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=N_TEST)
    y = (rng.random(N_TEST) < 0.45).astype(int)
    for budget, n_params in BUDGETS.items():
        study = make_study(budget, rng, paths.optuna_storage_url())
        best = max((t for t in study.trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("wasted")),
                   key=lambda t: t.value)
        out = paths.study_dir(TIER, budget, H)
        out.mkdir(parents=True)
        (out / "best.json").write_text(json.dumps({
            "study_name": study.study_name, "storage": paths.optuna_storage_url(), "tier": TIER, "budget": budget,
            "budget_params": int(budget[:-1]) * 1000, "horizon": H, "seed": 0, "trial_number": best.number,
            "mlflow_run_id": "r", "parent_run_id": "p", "experiment_id": "404", "params": best.params,
            "model_config": {}, "train_config": {}, "n_params": n_params, "metrics": {"val/auc": best.value},
            "data_version": "d", "git_commit": "g"}))
        p_raw = scores_for(test_aucs[budget], y, rng)
        promo = paths.promote_dir(TIER, H) / budget
        promo.mkdir(parents=True)
        pd.DataFrame({"date": dates, "y": y, "p_raw": p_raw, "p_cal": np.clip(p_raw * 0.9 + 0.03, 0, 1)}
                     ).to_parquet(promo / "predictions.parquet")
        (promo / "summary.json").write_text(json.dumps(promote_summary(study.study_name, budget)))
    base = paths.baselines_dir(TIER, H)
    base.mkdir(parents=True)
    frames = [pd.DataFrame({"date": dates, "split": "test", "y": y, "logreg": scores_for(0.58, y, rng),
                            "hgb": scores_for(0.57, y, rng)}),
              pd.DataFrame({"date": pd.bdate_range("2019-01-01", periods=50), "split": "val",
                            "y": rng.integers(0, 2, 50), "logreg": rng.random(50), "hgb": rng.random(50)})]
    pd.concat(frames).to_parquet(base / "predictions.parquet")
    (base / "metrics.json").write_text(json.dumps({"logreg": {"val/auc": 0.57, "test/auc": 0.58},
                                                   "hgb": {"val/auc": 0.56, "test/auc": 0.57}}))
    cross = paths.cross_budget_dir(TIER, H)
    cross.mkdir(parents=True)
    names = list(BUDGETS)
    mean = [[0.60 + 0.01 * i - 0.005 * abs(i - j) for j in range(3)] for i in range(3)]
    mean[2][0] = None  # the 200K structure is infeasible at 2K
    std = [[None if m is None else 0.004 for m in row] for row in mean]
    (cross / "matrix.json").write_text(json.dumps({
        "tier": TIER, "horizon": H, "metric": "val/auc", "budgets": names, "mean": mean, "std": std, "n_seeds": 3,
        "noise_rule": "off-diagonal within noise when |mean(s,t) - mean(t,t)| <= max(2 x std(t,t), 0.002)",
        "studies": {b: {"study_name": f"{TIER}-{b}-h{H}-0123abcd", "trial_number": 0} for b in names},
        "transfer": {b: {"transfers": True, "summary": "transfers (within noise at ['20K'], better at -)"}
                     for b in names}}))
    plots.heatmap([[np.nan if v is None else v for v in row] for row in mean], names, names, cross / "heatmap.png")


def promote_summary(study_name: str, budget: str) -> dict:
    """summary.json as ``tierhpo promote`` writes it (the fields the report reads)."""
    def metrics(ece: float) -> dict:
        return {"test/auc": 0.7, "test/ece": ece, "test/brier": 0.2 + ece / 10, "test/log_loss": 0.6 + ece}

    return {
        "tier": TIER, "horizon": H, "budget": budget, "n_params": BUDGETS[budget], "study_name": study_name,
        "calibrator": {"method": "sigmoid", "reason": "lowest blocked-CV log loss on validation"},
        "calibrator_reason": "lowest blocked-CV log loss on validation", "degenerate": None,
        "test": {"uncalibrated": metrics(0.08), "calibrated": metrics(0.03), "auc_ci": {},
                 "ece": "L1 ECE of the positive-class probability, equal-width bins (evaluation.metrics)"},
        "registry": {"name": f"tierhpo-{TIER}-h{H}-{budget}", "version": 1, "alias": None,
                     "decision": "kept without alias: not better than the champion on val/auc"},
    }


def write_project(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["report"] = {**params.get("report", {}), "bootstrap_reps": 300, "tiers": [TIER]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One finished pipeline per module (results/ and optuna.db), copied into each test."""
    base = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERHPO_ROOT", str(base / "proj"))
        mp.setenv("TIERHPO_OPTUNA_STORAGE", f"sqlite:///{base / 'optuna.db'}")
        write_project(base / "proj")
        build_pipeline(TEST_AUCS)
    MlflowClient(f"sqlite:///{base / 'mlflow.db'}").search_experiments()  # create the schema once (slow)
    return base


@pytest.fixture
def project(tmp_path, monkeypatch, template, isolated_stores) -> Path:
    root = tmp_path / "proj"
    write_project(root)
    shutil.copytree(template / "proj" / "results", root / "results")
    shutil.copy(template / "optuna.db", isolated_stores / "optuna.db")
    shutil.copy(template / "mlflow.db", isolated_stores / "mlflow.db")
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    return root


def attach_experiment() -> str:
    """Create the tier's MLflow experiment in this test's store and point every best.json at it."""
    experiment_id = MlflowClient(paths.mlflow_tracking_uri()).create_experiment(
        f"tierhpo-{TIER}", artifact_location=paths.mlflow_artifact_root())
    for best_path in (paths.results_dir() / "hpo" / TIER).glob("*/h*/best.json"):
        best = json.loads(best_path.read_text())
        best_path.write_text(json.dumps({**best, "experiment_id": experiment_id}))
    return experiment_id


def run_cli(*args: str) -> None:
    result = CliRunner().invoke(report.app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def cli_error(monkeypatch, capsys, *args: str) -> str:
    """Run the real console entry point; return its one-line error (exit status 2)."""
    monkeypatch.setattr(sys, "argv", ["tierhpo", "report", *args])
    with pytest.raises(SystemExit) as exc:
        cli.app()
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " INFO " not in ln]  # MLflow's store set-up log
    assert len(lines) == 1 and lines[0].startswith("tierhpo: error: "), lines
    return lines[0]


def test_report_on_a_finished_pipeline(project):
    experiment_id = attach_experiment()
    run_cli("--tier", TIER)
    out = project / "reports" / TIER
    md = (out / "summary.md").read_text()
    for section in SECTIONS:
        assert section in md
    assert "Not available" not in md

    rep = json.loads((out / "report.json").read_text())
    h = rep["horizons"][0]
    assert [s["budget"] for s in h["studies"]] == ["2K", "20K", "200K"]  # by real parameter count
    hpo = h["studies"][0]["hpo"]
    assert hpo["by_state"] == {"COMPLETE": 8, "FAIL": 1, "PRUNED": 1} and hpo["n_void"] == 1
    assert hpo["wasted"]["n_wasted"] == 3 and hpo["wasted"]["fraction"] == pytest.approx(0.3)
    assert set(hpo["wasted"]["by_reason"]) == {"failed", "late_pruned", "degenerate"}
    assert hpo["wasted"]["fail_reasons"] == {"RuntimeError": 1}
    best_json = json.loads((paths.study_dir(TIER, "2K", H) / "best.json").read_text())
    assert hpo["best"]["number"] == best_json["trial_number"]  # the degenerate trial is never the best
    assert len(hpo["top"]) == 5 and hpo["top"][0]["value"] == hpo["best"]["value"]
    assert hpo["compute"]["epochs"]["total"] == 30
    assert hpo["compute"]["seconds"]["total"] == pytest.approx(sum(2.0 + i for i in range(10)))
    eff = hpo["efficiency"]
    assert 1 <= eff["trials_to_within_tol"] <= 10 and eff["final_best"] == hpo["best"]["value"]
    cov = h["studies"][0]["coverage"]
    assert set(cov["params"]) == set(SPACE) and cov["n_explored"] == 9
    assert cov["pairs_from"] == "hpo.coverage.pairs" and [p["params"] for p in cov["pairs"]] == [["depth", "batch_size"]]
    assert cov["pairs"][0]["n_reachable"] == 11 and cov["pairs"][0]["unreachable"] == [[3, 2]]
    assert h["studies"][0]["importance"]["evaluator"] == "PedAnovaImportanceEvaluator"

    sc = h["scaling"]
    assert sc["verdict"] == stats.MONOTONIC
    assert "**Verdict: monotonic.**" in md and "larger is better" in md
    assert all(b["lo"] < b["auc"] < b["hi"] for b in sc["budgets"])
    assert sc["power_law"]["fitted"] is False  # three budgets are not enough for a fit
    assert h["consistency"]["cross_budget"]["available"]
    assert set(h["calibration"]["budgets"]["2K"]) >= {"calibrator", "before", "after"}
    assert len(h["baselines"]["comparisons"]) == 6

    # every image the summary shows exists and is a real PNG
    shown = re.findall(r"\]\((plots/[^)]+\.png)\)", md)
    assert len(shown) == 3 + 3 + 3 + 1 + 1 + 3  # history, coverage, pair coverage, scaling, cross-budget, reliability
    for rel in shown:
        png = out / rel
        assert png.stat().st_size > 5_000 and png.read_bytes()[:4] == b"\x89PNG"

    head = json.loads((out / "metrics.json").read_text())
    assert head["h1"]["scaling_verdict"] == 1
    assert head["h1"]["200K"]["test_auc"] == pytest.approx(sc["budgets"][2]["auc"])
    assert head["h1"]["logreg"]["test_auc_lo"] < head["h1"]["logreg"]["test_auc"]

    client = MlflowClient(paths.mlflow_tracking_uri())
    runs = client.search_runs([experiment_id], "tags.stage = 'report'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["tier"] == TIER and run.data.tags["git_commit"] and run.data.tags["data_version"]
    assert run.data.tags["scaling_verdict_h1"] == stats.MONOTONIC
    assert run.data.metrics["test/scaling_verdict_h1"] == 1
    assert "test/auc_h1_20K" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/summary.md", "report/report.json", "report/metrics.json", "report/plots"} <= logged
    assert len(client.list_artifacts(run.info.run_id, "report/plots")) == len(shown)

    # a rerun that fails leaves the previous report whole, no temp folder, and no new MLflow run
    (paths.cross_budget_dir(TIER, H) / "matrix.json").write_text("{not json")
    with pytest.raises(TierHpoError, match="matrix.json is not valid JSON"):
        run_cli("--tier", TIER)
    assert (out / "summary.md").read_text() == md
    assert not [p for p in (project / "reports").iterdir() if p.name.startswith(".")]
    assert len(client.search_runs([experiment_id], "tags.stage = 'report'")) == 1


@pytest.mark.parametrize(
    ("aucs", "verdict", "must", "must_not"),
    [
        ([0.7178, 0.7246, 0.7147], stats.INCONCLUSIVE, "must not be read as a trend", "larger is better"),
        ([0.85, 0.72, 0.60], stats.VIOLATED, "scaling is violated", "larger is better"),
        ([0.60, 0.72, 0.85], stats.MONOTONIC, "larger is better", "within noise"),
    ],
)
def test_wording_follows_the_verdict(aucs, verdict, must, must_not):
    # the original study's numbers on ~750 test days, a clear reversal, a clear gain
    rng = np.random.default_rng(3)
    y = (rng.random(750) < 0.45).astype(int)
    scores = {b: scores_for(a, y, rng) for b, a in zip(BUDGETS, aucs, strict=True)}
    section = {**stats.scaling_verdict(y, scores, BUDGETS, reps=300), "available": True,
               "first_day": "2020-01-01", "last_day": "2022-12-30"}
    assert section["verdict"] == verdict
    text = "\n".join(report.render_scaling(section, "h1"))
    assert f"**Verdict: {verdict}.**" in text and must in text and must_not not in text


def test_missing_promotion_is_a_one_line_error_and_writes_nothing(project, monkeypatch, capsys):
    shutil.rmtree(paths.promote_dir(TIER, H) / "20K")
    err = cli_error(monkeypatch, capsys, "--tier", TIER)
    assert "['20K']" in err and "tierhpo promote --tier a50 --horizon 1" in err and "--partial" in err
    assert not (project / "reports" / TIER).exists()


def test_partial_report_marks_missing_sections(project):
    shutil.rmtree(paths.promote_dir(TIER, H))
    shutil.rmtree(paths.cross_budget_dir(TIER, H))
    run_cli("--tier", TIER, "--partial", "--no-mlflow")
    md = (project / "reports" / TIER / "summary.md").read_text()
    for section in SECTIONS:
        assert section in md
    scaling = md.split("### Scaling verdict")[1].split("###")[0]
    assert "**Not available**: no promotion results" in scaling and "Verdict" not in scaling
    assert "**Not available**: no cross-budget matrix" in md
    assert "Paired comparison with the transformer: **not available**" in md
    assert not list((project / "reports" / TIER / "plots").glob("*reliability*"))


def test_report_run_nests_under_an_outer_mlflow_run(project, monkeypatch, tmp_path):
    # under `mlflow run`, MLFLOW_RUN_ID names the entry point's run: the report run nests under it
    client = MlflowClient(paths.mlflow_tracking_uri())
    outer_exp = client.create_experiment("outer", artifact_location=paths.mlflow_artifact_root() + "/outer")
    outer = client.create_run(outer_exp, run_name="mlflow-run-main").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "summary.md").write_text("# report\n")
    minimal = {"tier": TIER, "git_commit": "abc", "data_version": "d", "horizons": [], "headline": {},
               "params": {"alpha": 0.05}}
    run_id = report.log_to_mlflow(minimal, tmp_path / "rep")
    child = client.get_run(run_id)
    assert child.info.experiment_id == outer_exp and child.data.tags["mlflow.parentRunId"] == outer
    assert child.info.status == "FINISHED"
    assert client.get_run(outer).info.status == "RUNNING"  # the outer run is mlflow run's to end
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(TierHpoError, match="MLFLOW_RUN_ID=0+ is not a run"):
        report.log_to_mlflow(minimal, tmp_path / "rep")


def test_stale_promotion_and_missing_study_are_refused(project, monkeypatch, capsys):
    summary = paths.promote_dir(TIER, H) / "2K" / "summary.json"
    summary.write_text(json.dumps(promote_summary("a50-2K-h1-old", "2K")))
    assert "rerun `tierhpo promote --tier a50 --horizon 1`" in cli_error(monkeypatch, capsys, "--tier", TIER)
    summary.write_text(json.dumps(promote_summary(f"{TIER}-2K-h{H}-0123abcd", "2K")))
    matrix = paths.cross_budget_dir(TIER, H) / "matrix.json"
    doc = json.loads(matrix.read_text())
    doc["studies"]["20K"]["study_name"] = "a50-20K-h1-old"
    matrix.write_text(json.dumps(doc))
    assert "rerun `tierhpo cross-budget --tier a50 --horizon 1`" in cli_error(monkeypatch, capsys, "--tier", TIER)
    optuna.delete_study(study_name=f"{TIER}-20K-h{H}-0123abcd", storage=paths.optuna_storage_url())
    assert "is not in the Optuna storage" in cli_error(monkeypatch, capsys, "--tier", TIER)
    missing = project / "nowhere.db"
    monkeypatch.setenv("TIERHPO_OPTUNA_STORAGE", f"sqlite:///{missing}")
    assert "does not exist" in cli_error(monkeypatch, capsys, "--tier", TIER)
    assert not missing.exists()  # reading never creates a storage


def test_no_hpo_results(project, monkeypatch, capsys):
    shutil.rmtree(paths.results_dir() / "hpo")
    assert "no HPO results for tier a50" in cli_error(monkeypatch, capsys, "--tier", TIER)
    assert "unknown tier(s) 'a7'; choose one of" in cli_error(monkeypatch, capsys, "--tier", "a7")
    assert "no HPO results under" in cli_error(monkeypatch, capsys, "--all")


def test_missing_experiment_is_refused_before_writing(project, monkeypatch, capsys):
    assert "MLflow experiment of tier a50" in cli_error(monkeypatch, capsys, "--tier", TIER)
    assert not (project / "reports").exists()


def test_config_is_validated(project):
    with pytest.raises(TierHpoError, match="report.alpha"):
        report.ReportParams(alpha=0.7)
    with pytest.raises(TierHpoError, match="block_length"):
        report.ReportParams(block_length=0)


@pytest.mark.slow
def test_report_reads_real_hpo_studies(tmp_path, monkeypatch):
    """Two real studies from the HPO engine (real trainer, SQLite storage, MLflow store), reported with
    --partial: the HPO, coverage and importance sections must read the engine's own records."""
    from test_hpo_engine import settings, tiny_data, tiny_spec

    from training.search.results import write_outputs
    from training.search.study import run_study

    root = tmp_path / "proj"
    write_project(root)
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    data = tiny_data()
    for budget in ("5K", "10K"):
        spec = tiny_spec(data, tier=TIER, budget=budget)
        result = run_study(spec, data, 4, paths.optuna_storage_url(),
                           settings=settings(paths.mlflow_tracking_uri()), plots=False)
        write_outputs(result, paths.study_dir(TIER, budget, H))
    run_cli("--tier", TIER, "--partial")

    out = root / "reports" / TIER
    rep = json.loads((out / "report.json").read_text())
    (h,) = rep["horizons"]
    assert [s["budget"] for s in h["studies"]] == ["5K", "10K"]
    for study in h["studies"]:
        best = json.loads((paths.study_dir(TIER, study["budget"], H) / "best.json").read_text())
        hpo = study["hpo"]
        assert hpo["best"]["number"] == best["trial_number"]
        assert hpo["best"]["value"] == pytest.approx(best["metrics"]["val/auc"])
        assert hpo["by_state"].get("COMPLETE", 0) >= 4 and hpo["by_phase"]["forced"] == 2
        assert hpo["compute"]["epochs"]["total"] > 0 and hpo["compute"]["seconds"]["total"] > 0
        cov = study["coverage"]
        assert cov["bins"] == 3 and cov["pairs_from"] == "hpo.coverage.pairs"
        assert [p["params"] for p in cov["pairs"]] == [["lr", "batch_size"]]
        assert study["importance"]["evaluator"] == "PedAnovaImportanceEvaluator"
    md = (out / "summary.md").read_text()
    assert md.count("**Not available**") == 4  # cross-budget, scaling, calibration, baselines
    client = MlflowClient(paths.mlflow_tracking_uri())
    experiment = json.loads((paths.study_dir(TIER, "5K", H) / "best.json").read_text())["experiment_id"]
    (run,) = client.search_runs([experiment], "tags.stage = 'report'")
    assert run.info.status == "FINISHED"
