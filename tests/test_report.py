"""The report stage on a tiny finished grid (tests/fake_grid.py): tiers a20 and a50 x budgets 2K,
20K, 200K, horizon 1, every input a declared DVC dependency. No Optuna store exists in these tests:
the report reads study.json (a50) or trials.csv (a20) only."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import fake_grid
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from common import paths
from common.errors import TierHpoError
from evaluation import scaling
from pipelines import cli
from pipelines.report import grid, render, stage
from pipelines.report.params import ReportParams
from training.search import study_outputs
from training.selection_record import SelectionRecord

REPO = Path(__file__).resolve().parents[1]
H = fake_grid.H
SECTIONS = ("#### HPO results", "#### Coverage", "#### Parameter importance", "#### HP consistency across budgets",
            "#### Scaling verdict", "#### Calibration", "#### Baselines")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERHPO_ROOT", str(base / "proj"))
        fake_grid.write_params(base / "proj", REPO)
        fake_grid.build_grid()
    MlflowClient(f"sqlite:///{base / 'mlflow.db'}").search_experiments()  # create the schema once (slow)
    return base


@pytest.fixture
def project(tmp_path, monkeypatch, template, isolated_stores) -> Path:
    import shutil

    root = tmp_path / "proj"
    fake_grid.write_params(root, REPO)
    shutil.copytree(template / "proj" / "results", root / "results")
    shutil.copy(template / "mlflow.db", isolated_stores / "mlflow.db")
    monkeypatch.setenv("TIERHPO_ROOT", str(root))
    # the report must never open the Optuna store: there is none, and opening one fails loudly
    assert not (isolated_stores / "optuna.db").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("the report opened the Optuna store")

    monkeypatch.setattr(optuna, "load_study", refuse)
    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", refuse)
    return root


def run_cli(*args: str) -> None:
    result = CliRunner().invoke(stage.app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def cli_error(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["tierhpo", "report", *args])
    with pytest.raises(SystemExit) as exc:
        cli.app()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def attach_experiment() -> str:
    experiment_id = MlflowClient(paths.mlflow_tracking_uri()).create_experiment(
        "tierhpo-SYN", artifact_location=paths.mlflow_artifact_root())
    for best_path in (paths.results_dir() / "hpo").glob("*/*/h*/best.json"):
        best_path.write_text(json.dumps({**json.loads(best_path.read_text()), "experiment_id": experiment_id}))
    return experiment_id


def test_summary_leads_with_the_grid_answer(project):
    run_cli("--no-mlflow")
    out = project / "reports"
    md = (out / "summary.md").read_text()
    opening = "\n".join(md.splitlines()[:12])
    assert "Answer (h1):" in opening and "200K transformer on tier a50" in opening
    # each baseline with its reading, test and adjusted p
    assert "**beats** volatility (Parkinson 5d) (+0.0300 [+0.0040, +0.0560], p = 0.012)" in opening
    assert "**does not beat** logistic regression" in opening and "**does not beat** gradient boosting" in opening
    assert "two-level bootstrap, paired AUC difference, holm-adjusted p-values, each interval at the level of its holm step" in opening
    assert "a20 **monotonic**, a50 **inconclusive**" in opening
    assert "2K **inconclusive**, 20K **more features help**, 200K **inconclusive**" in opening
    assert "Model confidence set (90 %): a20/200K, a50/200K." in opening
    assert "train 0.247, val 0.159, test 0.116" in opening and "val->test gap" in opening
    assert "seed noise (val AUC sd up to 0.011) exceeds the spread of the top trials (0.004)" in opening
    assert "**did not pass**" in opening

    # the grid table: budgets by parameter count, MCS marks, links down to each tier's section
    header = next(line for line in md.splitlines() if line.startswith("| tier \\ budget"))
    assert header.split("|")[2:5] == [" 2K ", " 20K ", " 200K "]
    assert "**0.710 [0.680, 0.740]** `MCS`" in md  # a50/200K: best and in the MCS
    assert "[a20](#tier-a20)" in md and "[a50](#tier-a50)" in md
    assert "## Tier a20" in md and "## Tier a50" in md
    assert "](headline/h1_test_auc.png)" in md
    for tier in ("a20", "a50"):
        section = md.split(f"## Tier {tier}")[1]
        for heading in SECTIONS:
            assert heading in section, (tier, heading)
    assert md.count("**Not available**") == 0
    # importances carry their trial count and the caveat below 30 trials
    assert re.search(r"2K \(PedAnovaImportanceEvaluator, 8 complete trials\):.*\*\*caveat\*\*: fewer than 30", md)
    # every image link resolves (report plots, and the other stages' own figures linked, not copied)
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).resolve().is_file(), link
    assert "../results/promote/a50/h1/200K/reliability.png" not in md  # none drawn by the fake promote
    assert "../results/cross_budget/a50/h1/heatmap.png" in md

    # plots: headline first, tiers in grid order, budgets by parameter count
    names = sorted(p.relative_to(out / "plots").as_posix() for p in (out / "plots").rglob("*.png"))
    assert (out / "headline" / "h1_test_auc.png").is_file()
    assert names[0].startswith("01_a20/h1/") and names[-1].startswith("02_a50/h1/")
    a50 = [n for n in names if n.startswith("02_a50/h1/")]
    assert a50[0] == "02_a50/h1/00_scaling.png"
    assert [n.split("_")[2] for n in a50 if n.endswith("_history.png")] == ["2K", "20K", "200K"]

    head = json.loads((out / "metrics.json").read_text())
    assert head["h1"]["best_test_auc"] == pytest.approx(0.71) and head["h1"]["champion"] == 0
    assert head["h1"]["scaling_a20"] == 1 and head["h1"]["tiers_20K"] == 1 and head["h1"]["mcs_size"] == 2
    assert set(head["h1"]["test_auc"]) == {f"{t}_{b}" for t in fake_grid.TIERS for b in fake_grid.BUDGETS}
    assert len(json.dumps(head)) < 1200  # one readable `dvc metrics show` row

    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["cell"]) == {f"{t}/{b}/h1" for t in fake_grid.TIERS for b in fake_grid.BUDGETS}
    assert {"trial", "val_auc", "param_lr"} <= set(trials.columns)
    rep = json.loads((out / "report.json").read_text())
    assert rep["tiers"] == ["a20", "a50"] and rep["budgets"] == ["2K", "20K", "200K"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_trials_csv_and_study_json_tell_the_same_story(project):
    """a20 has only trials.csv, a50 also study.json: both replay to the same best and the same counts."""
    for tier in ("a20", "a50"):
        d = paths.study_dir(tier, "20K", H)
        best = json.loads((d / "best.json").read_text())
        study = study_outputs.load(d, "tierhpo hpo")
        from training.search import analysis as hpo_analysis

        summary = hpo_analysis.hpo_summary(study)
        assert summary["best"]["number"] == best["trial_number"], tier
        assert summary["best"]["value"] == pytest.approx(best["metrics"]["val/auc"])
        assert summary["wasted"]["by_reason"]["degenerate"]["count"] == 1
    a50 = study_outputs.load(paths.study_dir("a50", "20K", H), "x")
    assert a50.user_attrs["coverage"]["overall"] == 0.8  # the snapshot travels in study.json


@pytest.mark.slow  # runs the whole report stage (15-30 s); CI runs it
def test_report_logs_one_run(project):
    experiment_id = attach_experiment()
    run_cli()
    client = MlflowClient(paths.mlflow_tracking_uri())
    (run,) = client.search_runs([experiment_id], "tags.stage = 'report'")
    assert run.info.status == "FINISHED" and run.data.tags["best_h1"] == "a50/200K"
    assert run.data.metrics["test/auc_best_h1"] == pytest.approx(0.71)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/summary.md", "report/metrics.json", "report/trials.csv", "report/plots",
            "report/headline"} <= logged


@pytest.mark.slow  # runs the whole report stage (15-30 s); CI runs it
def test_missing_selection_is_one_line_error_or_partial(project, monkeypatch, capsys):
    (paths.results_dir() / "select" / "h1" / "verdicts.json").unlink()
    err = cli_error(monkeypatch, capsys, "--no-mlflow")
    assert "no selection record for h1" in err and "tierhpo select --horizon 1" in err
    assert not (project / "reports" / "summary.md").exists()
    run_cli("--no-mlflow", "--partial")
    md = (project / "reports" / "summary.md").read_text()
    assert "Horizon 1: no grid answer" in md.splitlines()[2] and "## Tier a50" in md


def test_stale_or_bad_selection_is_refused(project, monkeypatch, capsys):
    path = paths.results_dir() / "select" / "h1" / "verdicts.json"
    raw = json.loads(path.read_text())
    raw["cells"].append({**raw["cells"][0], "tier": "a100"})
    path.write_text(json.dumps(raw))
    assert "rerun `tierhpo select --horizon 1`" in cli_error(monkeypatch, capsys, "--no-mlflow")
    raw["cells"].pop()
    raw["budget_verdicts"]["a20"]["verdict"] = "bigger is better"
    path.write_text(json.dumps(raw))
    assert "does not follow the selection contract" in cli_error(monkeypatch, capsys, "--no-mlflow")


def test_bad_study_outputs_are_refused(project, monkeypatch, capsys):
    (paths.study_dir("a50", "20K", H) / "study.json").write_text('{"trials": []}')
    assert "does not follow the study-outputs contract" in cli_error(monkeypatch, capsys, "--no-mlflow")
    assert "unknown tier(s) 'a7'; choose one of" in cli_error(monkeypatch, capsys, "--tier", "a7")


def test_selection_record_round_trip(tmp_path):
    rec = fake_grid.selection_record(gate_passed=True)
    rec.write(tmp_path)
    back = SelectionRecord.read(tmp_path)
    assert back == rec and back.best_cell.key == "a50/200K"
    with pytest.raises(TierHpoError, match="run `tierhpo select`"):
        SelectionRecord.read(tmp_path / "nowhere")


def test_readings_use_the_adjusted_numbers():
    from training.selection_record import Interval

    assert grid.reading(Interval(0.03, 0.004, 0.056, 0.004, 0.012), 0.05) == "beats"
    assert grid.reading(Interval(0.03, 0.004, 0.056, 0.004, 0.07), 0.05) == "does not beat"  # adjusted p rules
    assert grid.reading(Interval(-0.03, -0.05, -0.01, 0.001, 0.003), 0.05) == "is beaten by"


@pytest.mark.parametrize(
    ("aucs", "verdict", "must", "must_not"),
    [
        ([0.7178, 0.7246, 0.7147], scaling.INCONCLUSIVE, "must not be read as a trend", "larger is better"),
        ([0.85, 0.72, 0.60], scaling.VIOLATED, "scaling is violated", "larger is better"),
        ([0.60, 0.72, 0.85], scaling.MONOTONIC, "larger is better", "within noise"),
    ],
)
def test_wording_follows_the_verdict(aucs, verdict, must, must_not):
    rng = np.random.default_rng(3)
    y = (rng.random(750) < 0.45).astype(int)
    scores = {b: fake_grid.scores_for(a, y, rng) for b, a in zip(fake_grid.BUDGETS, aucs, strict=True)}
    section = {**scaling.scaling_verdict(y, scores, fake_grid.BUDGETS, reps=300), "available": True,
               "first_day": "2020-01-01", "last_day": "2022-12-30"}
    assert section["verdict"] == verdict
    text = render.render("scaling", sc=section, tag="a50 h1", scaling_plot=None)
    assert f"**Verdict: {verdict}.**" in text and must in text and must_not not in text
    assert "[CI]" not in text  # no unadjusted interval beside the Holm reading


def test_config_is_validated():
    with pytest.raises(TierHpoError, match="report.alpha"):
        ReportParams(alpha=0.7)
    with pytest.raises(TierHpoError, match="report.block_length"):
        ReportParams(block_length=0)


@pytest.mark.slow  # runs the whole report stage (15-30 s); CI runs it
def test_cross_tier_matrix_per_budget_in_the_grid_part(project, monkeypatch, capsys):
    run_cli("--no-mlflow")
    md = (project / "reports" / "summary.md").read_text()
    grid_part = md.split("## The grid")[1].split("## Tier a20")[0]
    assert "### Horizon 1: do a tier's hyperparameters transfer to the other tiers?" in grid_part
    assert "| source \\ target | a20 | a50 | transfers? |" in grid_part
    assert "| a20 | 0.620 ± 0.004 (own) | 0.615 ± 0.004 (within noise) | yes |" in grid_part
    assert "| a50 | 0.580 ± 0.004 (worse) | 0.620 ± 0.004 (own) | no |" in grid_part
    assert "| a50 | infeasible: no d_model puts n_layers=4 with 20 input features within 10% of 200K |" in grid_part
    assert grid_part.index("Budget 2K") < grid_part.index("Budget 20K") < grid_part.index("Budget 200K")
    # a missing matrix: one-line error naming the command, or "Not available" under --partial
    (paths.cross_tier_dir("20K", H) / "matrix.json").unlink()
    err = cli_error(monkeypatch, capsys, "--no-mlflow")
    assert "no cross-tier matrix for 20K h1" in err and "tierhpo cross-tier --budget 20K --horizon 1" in err
    run_cli("--no-mlflow", "--partial")
    md = (project / "reports" / "summary.md").read_text()
    assert "Budget 20K: **Not available**: no cross-tier matrix for 20K h1" in md
    assert "run `tierhpo cross-tier --budget 20K --horizon 1`" in md and "Budget 200K (3 seeds" in md
    # a matrix from other studies is refused
    path = paths.cross_tier_dir("2K", H) / "matrix.json"
    raw = json.loads(path.read_text())
    raw["studies"]["a50"]["study_name"] = "old"
    path.write_text(json.dumps(raw))
    assert "computed from study 'old'" in cli_error(monkeypatch, capsys, "--no-mlflow", "--partial")


def test_study_json_keeps_categorical_choices_and_the_coverage_snapshot(tmp_path):
    """The HPO stage's study.json replays with the real distributions: batch_size stays the categorical
    (64, 128, 256) the sampler used, so coverage bins are its three values, not an int range 64..256."""
    import optuna

    from training.search import analysis

    study = optuna.create_study(direction="maximize")
    study.set_metric_names(["val/auc"])
    study.set_user_attr("coverage", {"axes": {}})
    space = {"batch_size": optuna.distributions.CategoricalDistribution([64, 128, 256]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for i, (bs, lr) in enumerate([(64, 1e-3), (256, 3e-3), (64, 2e-4)]):
        study.add_trial(optuna.trial.create_trial(params={"batch_size": bs, "lr": lr}, distributions=space,
                                                  value=0.7 + 0.01 * i, user_attrs={"phase": "forced"},
                                                  intermediate_values={0: 0.6, 1: 0.7 + 0.01 * i}))
    doc = study_outputs.study_document(study, study.get_trials())
    (tmp_path / "study.json").write_text(json.dumps(doc))
    (tmp_path / "trials.csv").write_text("number,state,value\n0,COMPLETE,0.7\n")  # study.json wins
    replayed = study_outputs.load(tmp_path, "tierhpo hpo")
    assert [t.params for t in replayed.trials] == [t.params for t in study.trials]
    assert replayed.trials[1].intermediate_values == {0: 0.6, 1: 0.71}
    assert replayed.user_attrs["coverage"] == {"axes": {}} and replayed.metric_names == ["val/auc"]
    cov = analysis.coverage_analysis(replayed, bins=5)
    assert cov["params"]["batch_size"]["labels"] == ["64", "128", "256"]
    assert cov["params"]["batch_size"]["counts"] == [2, 0, 1]
