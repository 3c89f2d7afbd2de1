"""Cross-budget validation on two tiny real studies (2K with its HPO refit, 8K without): plan, dry
run, the diagonal read from refit.json, matrix, verdicts, MLflow run."""

from __future__ import annotations

import dataclasses
import json

import mlflow
import pytest
from fake_study import HORIZON, TIER, make_study, shared_studies, tiny_tier
from typer.testing import CliRunner

from common import paths
from common.errors import TierHpoError
from common.mlflow_runs import create_stage_run
from pipelines import cross_budget as cb
from training.budget import Architecture
from training.model import ModelConfig
from training.seeds import fresh_seeds
from training.study_record import read_study, resolve_budgets
from training.trainer import train
from training.transfer import Cell, reusable_refit, solver_rules, summarise, train_cells, welch_p

SMALL = Architecture(n_layers=2, n_heads=2, d_ff_ratio=2.0, patch_len=4)  # feasible at 2K and 8K
WIDE_HEADS = Architecture(n_layers=2, n_heads=4, d_ff_ratio=2.0, patch_len=4)  # infeasible at 2K
BUDGETS = ["2K", "8K"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Two real studies (2K with a 2-seed refit, 8K without one) and their MLflow store, built once."""
    def make():
        data = tiny_tier()
        return data, {"2K": make_study(data, "2K", SMALL, lr=3e-3, dropout=0.1, seed=0, refit_seeds=2),
                      "8K": make_study(data, "8K", WIDE_HEADS, lr=1e-3, dropout=0.2, seed=5)}

    return shared_studies(tmp_path_factory, "xb", {"cross_budget": {"seeds": 2, "alpha": 0.05, "budgets": []},
                                                   "hpo": {"budgets": BUDGETS}}, make)


@pytest.fixture
def studies(shared, monkeypatch):
    return shared.use(monkeypatch)


def all_runs() -> list:
    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def test_dry_run_prints_the_plan_and_trains_and_writes_nothing(studies, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("--dry-run must not train")

    monkeypatch.setattr("training.trainer.train", no_training)
    runs_before = len(all_runs())
    outputs_before = paths.cross_budget_dir(TIER, HORIZON).exists()
    result = CliRunner().invoke(cb.app, ["--tier", TIER, "--horizon", str(HORIZON), "--dry-run"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    assert "2K hp at 8K" in out and "8K hp at 2K infeasible: no d_model" in out
    # 2K's diagonal: its refit already trained both fresh seeds; 8K has no refit, so its diagonal trains.
    assert "2K hp at 2K n_features=6 " in out
    assert f"seeds {fresh_seeds(0, 2)} from refit.json; nothing to train" in out
    assert f"train seeds {fresh_seeds(0, 2)} (one batch)" in out  # 2K hyperparameters at 8K
    assert f"train seeds {fresh_seeds(5, 2)} (one batch)" in out  # 8K's diagonal
    assert "2 x 3.0s per trial" in out  # median of the COMPLETE trials' recorded durations (2, 4, 3 s)
    assert "total: 4 training runs (2 seeds read from refit.json)" in out
    assert paths.cross_budget_dir(TIER, HORIZON).exists() == outputs_before
    assert len(all_runs()) == runs_before
    # The MLproject entry point passes the flag as an environment variable (`-P dry_run=true`).
    monkeypatch.setenv("TIERHPO_DRY_RUN", "true")
    again = CliRunner().invoke(cb.app, ["--tier", TIER, "--horizon", str(HORIZON)])
    assert again.exit_code == 0 and again.output == out
    assert paths.cross_budget_dir(TIER, HORIZON).exists() == outputs_before


def test_matrix_verdicts_outputs_and_mlflow_run(studies):
    data, best = studies
    cfg = cb.CrossBudgetConfig(seeds=2)
    doc = cb.run_cross_budget(TIER, HORIZON, BUDGETS, cfg, data)

    out = paths.cross_budget_dir(TIER, HORIZON)
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["budgets"] == BUDGETS and saved["n_seeds"] == 2
    cells = {(c["source"], c["target"]): c for c in saved["cells"]}
    # Diagonal: fresh seeds, never the study's own seed (winner's curse); 2K's are its refit's, read
    # from refit.json; 8K has no refit, so its diagonal is trained here.
    diag = cells[("2K", "2K")]
    assert diag["seeds"] == fresh_seeds(0, 2) and 0 not in diag["seeds"]
    assert diag["seeds_from_refit"] == diag["seeds"] and "refit.json" in saved["diagonal"]
    refit = json.loads((paths.study_dir(TIER, "2K", HORIZON) / "refit.json").read_text())
    assert diag["val_auc"] == {str(m["seed"]): m["val/auc"] for m in refit["members"]} and diag["n"] == 2
    assert best["2K"]["metrics"]["val/auc"] not in diag["val_auc"].values()
    assert cells[("8K", "8K")]["seeds_from_refit"] == [] and cells[("8K", "8K")]["n"] == 2
    assert cells[("2K", "8K")]["seeds_from_refit"] == []
    # Infeasible cell reported as such, never trained.
    assert cells[("8K", "2K")]["verdict"] == "infeasible" and cells[("8K", "2K")]["mean"] is None
    assert "n_heads=4" in cells[("8K", "2K")]["reason"]
    assert saved["mean"][1][0] is None
    # Off-diagonal cell: re-solved width, within budget, every seed trained.
    off = cells[("2K", "8K")]
    assert off["feasible"] and abs(off["n_params"] - 8000) <= 800
    assert off["model_config"]["d_model"] > best["2K"]["model_config"]["d_model"]
    assert off["verdict"] in ("within noise", "worse", "better") and 0.0 <= off["p_value"] <= 1.0
    assert off["verdict"] == ("within noise" if off["p_value"] >= 0.05 else "worse" if off["gap"] < 0 else "better")
    assert off["seeds"] == diag["seeds"]  # a source's cells share its seeds
    assert "Welch" in saved["noise_rule"] and saved["alpha"] == 0.05
    assert saved["transfer"]["2K"]["transfers"] == (off["verdict"] != "worse")
    assert saved["transfer"]["8K"]["transfers"] is None and "infeasible at ['2K']" in saved["transfer"]["8K"]["summary"]
    # Best hyperparameters side by side.
    assert saved["best_hyperparameters"]["2K"]["lr"] == 3e-3 and saved["best_hyperparameters"]["8K"]["dropout"] == 0.2
    table = (out / "hparams.md").read_text()
    assert "| lr" in table and "Transfer verdicts" in table
    assert f"- 2K: seeds {fresh_seeds(0, 2)} from refit.json, [] trained here" in table
    assert (out / "heatmap.png").stat().st_size > 5000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/auc"]["2K_hp"]["at_8K"] == pytest.approx(off["mean"])

    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "cross-budget"
    assert {"git_commit", "raw_version", "tier", "horizon"} <= set(run.data.tags)
    assert run.data.tags["stage"] == "cross-budget"
    assert run.data.tags["diagonal_from_refit.2K"] == ",".join(map(str, fresh_seeds(0, 2)))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "cross-budget")}
    assert {"cross-budget/matrix.json", "cross-budget/heatmap.png", "cross-budget/hparams.md"} <= artifacts
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    # 8K's diagonal (no refit) and the one feasible off-diagonal cell, two seeds each; 2K's diagonal is the refit's
    assert len(children) == 2 + 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["tier"] for c in children} == {TIER}


def test_fresh_seeds_never_include_the_study_seed():
    for study_seed in (0, 5, 123):
        seeds = fresh_seeds(study_seed, 5)
        assert len(set(seeds)) == 5 and study_seed not in seeds
        assert seeds == fresh_seeds(study_seed, 5) and seeds[:3] == fresh_seeds(study_seed, 3)


def test_the_diagonal_read_from_refit_json_is_what_training_it_again_gives(studies):
    """The refit (pipelines.hpo.refit_best) and a transfer cell both go through train_batch with the
    same config, data and seeds: the per-seed val metrics are bit-identical, so reading them is exact."""
    data, _ = studies
    study = read_study(TIER, "2K", HORIZON)
    from_refit = reusable_refit(study)
    assert list(from_refit) == fresh_seeds(0, 2)
    again = Cell("2K", "2K", study.model_config(), 1, fresh_seeds(0, 2))  # no from_refit: trains both seeds
    train_cells([again], {"2K": study}, data)
    assert again.val_auc == from_refit  # exact, not approx


def test_seeds_beyond_the_refit_are_the_only_ones_trained(studies):
    data, _ = studies
    study = {b: read_study(TIER, b, HORIZON) for b in BUDGETS}
    cells = {(c.source, c.target): c for c in cb.plan(study, cb.CrossBudgetConfig(seeds=3), solver_rules())}
    diag = cells[("2K", "2K")]
    assert diag.seeds == fresh_seeds(0, 3) and list(diag.from_refit) == fresh_seeds(0, 2)
    assert diag.to_train == fresh_seeds(0, 3)[2:]
    assert cells[("2K", "8K")].to_train == fresh_seeds(0, 3) and cells[("8K", "8K")].to_train == fresh_seeds(5, 3)
    trained = []
    train_cells([diag], study, data, on_run=lambda cell, seed, result: trained.append(seed))
    assert trained == fresh_seeds(0, 3)[2:] and list(diag.val_auc) == fresh_seeds(0, 3)
    assert {s: diag.val_auc[s] for s in fresh_seeds(0, 2)} == diag.from_refit


def test_a_refit_of_another_configuration_is_not_reused(studies, tmp_path):
    import shutil

    study = read_study(TIER, "2K", HORIZON)
    copy = tmp_path / "2K"
    shutil.copytree(study.directory, copy)
    refit = json.loads((copy / "refit.json").read_text())
    (copy / "refit.json").write_text(json.dumps({**refit, "train_config": {**refit["train_config"], "lr": 0.5}}))
    assert reusable_refit(dataclasses.replace(study, directory=copy)) == {}
    (copy / "refit.json").unlink()
    assert reusable_refit(dataclasses.replace(study, directory=copy)) == {}


def test_a_cell_trained_as_one_batch_matches_training_each_seed_alone(studies):
    """train_cells trains a cell's seeds in one train_batch pass; each member is the model
    trainer.train gives for that seed (same init, same data order)."""
    data, best = studies
    study = read_study(TIER, "2K", HORIZON)
    seeds = fresh_seeds(0, 2)
    one = Cell("2K", "2K", study.model_config(), 1, seeds)
    train_cells([one], {"2K": study}, data)
    base = dataclasses.replace(study.train_config(), progress=False)
    for seed in seeds:
        alone = train(study.model_config(), dataclasses.replace(base, seed=seed), data)
        assert one.val_auc[seed] == pytest.approx(alone.val_metrics["val/auc"], abs=2e-3)


def test_cells_on_two_one_thread_processes_give_the_same_matrix(studies):
    """workers=2 trains cells side by side in two one-thread processes; every cell trains on one
    thread wherever it runs, so the values equal workers=1 exactly, and the MLflow callback still
    sees the cells in order, in this process."""
    data, _ = studies
    study = {b: read_study(TIER, b, HORIZON) for b in BUDGETS}
    plans = {w: [c for c in cb.plan(study, cb.CrossBudgetConfig(seeds=2), solver_rules()) if c.to_train]
             for w in (1, 2)}
    assert len(plans[1]) >= 2
    seen = {1: [], 2: []}
    for w, cells in plans.items():
        train_cells(cells, study, data, on_run=lambda c, seed, r, w=w: seen[w].append((c.source, c.target, seed)),
                    workers=w)
    assert [c.val_auc for c in plans[2]] == [c.val_auc for c in plans[1]]  # exact
    assert seen[2] == seen[1] == [(c.source, c.target, s) for c in plans[1] for s in c.to_train]


def test_workers_must_not_be_negative():
    with pytest.raises(TierHpoError, match="workers must be >= 0"):
        cb.CrossBudgetConfig(workers=-1)


def cell(source, target, aucs, feasible=True):
    shape = ModelConfig(n_features=2, context_len=4, patch_len=2, d_model=4, n_layers=1, n_heads=1, d_ff=4)
    return Cell(source, target, shape if feasible else None, 1, list(range(len(aucs))),
                val_auc=dict(enumerate(aucs)))


def test_verdict_rule_is_welchs_t_test_against_the_diagonal():
    from scipy import stats

    cfg = cb.CrossBudgetConfig(seeds=3, alpha=0.05)
    budgets = ["1M", "2M", "3M"]
    cells = [
        cell("1M", "1M", [0.70, 0.71, 0.72]), cell("1M", "2M", [0.745, 0.75, 0.755]),
        cell("1M", "3M", [0.70, 0.705, 0.71]),
        cell("2M", "1M", [0.69, 0.70, 0.71]), cell("2M", "2M", [0.75, 0.76, 0.77]),
        cell("2M", "3M", [0.60, 0.61, 0.62]),
        cell("3M", "1M", [], feasible=False), cell("3M", "2M", [], feasible=False),
        cell("3M", "3M", [0.64, 0.65, 0.66]),
    ]
    summary = summarise(cells, budgets, cfg)
    by = {(c["source"], c["target"]): c for c in summary["cells"]}
    got = {k: c["verdict"] for k, c in by.items()}
    assert got[("1M", "2M")] == "within noise"  # 0.75 vs 0.76: p ~ 0.2
    assert by[("1M", "2M")]["p_value"] == pytest.approx(
        stats.ttest_ind([0.745, 0.75, 0.755], [0.75, 0.76, 0.77], equal_var=False).pvalue)
    assert got[("1M", "3M")] == "better" and by[("1M", "3M")]["p_value"] < 0.05
    assert got[("2M", "1M")] == "within noise"
    assert got[("2M", "3M")] == "worse" and by[("2M", "3M")]["gap"] == pytest.approx(-0.04)
    assert got[("3M", "1M")] == "infeasible"
    assert got[("1M", "1M")] == "diagonal" and "p_value" not in by[("1M", "1M")]
    t = summary["transfer"]
    assert t["1M"]["transfers"] is True and t["2M"]["transfers"] is False and t["3M"]["transfers"] is None
    assert summary["mean"][0][1] == pytest.approx(0.75) and summary["std"][0][0] == pytest.approx(0.01)


def test_welch_edge_cases_and_alpha():
    assert welch_p([0.7], [0.6, 0.7]) is None  # one finite seed: no test
    assert welch_p([0.7, 0.7], [0.7, 0.7]) == 1.0  # no spread anywhere, equal
    assert welch_p([0.7, 0.7], [0.6, 0.6]) == 0.0  # no spread anywhere, different
    budgets = ["1M", "2M"]
    cells = [cell("1M", "1M", [0.70, 0.71, 0.72]), cell("1M", "2M", [0.70, 0.71, 0.72]),
             cell("2M", "1M", [0.74, 0.755, 0.76]), cell("2M", "2M", [0.74, 0.75, 0.76])]
    loose = summarise(cells, budgets, cb.CrossBudgetConfig(seeds=3, alpha=0.5))
    strict = summarise(cells, budgets, cb.CrossBudgetConfig(seeds=3, alpha=0.001))
    assert {c["verdict"] for c in loose["cells"] if c["source"] == "2M" and c["target"] == "1M"} == {"better"}
    assert {c["verdict"] for c in strict["cells"] if c["source"] == "2M" and c["target"] == "1M"} == {"within noise"}
    with pytest.raises(TierHpoError, match="alpha"):
        cb.CrossBudgetConfig(alpha=1.5)
    with pytest.raises(TierHpoError, match="seeds"):
        cb.CrossBudgetConfig(seeds=1)


def test_missing_study_and_bad_budgets_are_one_line_errors(studies):
    runner = CliRunner()
    result = runner.invoke(cb.app, ["--tier", TIER, "--horizon", str(HORIZON), "--budgets", "2K,20K", "--dry-run"])
    assert isinstance(result.exception, TierHpoError)
    assert "tierhpo hpo --tier a50 --budget 20K --horizon 1" in str(result.exception)
    result = runner.invoke(cb.app, ["--tier", TIER, "--horizon", str(HORIZON), "--budgets", "2K", "--dry-run"])
    assert isinstance(result.exception, TierHpoError) and "at least two budgets" in str(result.exception)
    with pytest.raises(TierHpoError, match="distinct"):
        resolve_budgets(["2K", "2000"])


def test_stage_run_nests_under_an_outer_mlflow_run(studies, monkeypatch):
    """Under `mlflow run` the stage's run is a new child of MLFLOW_RUN_ID, in that run's experiment."""
    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    outer_exp = client.create_experiment("outer", artifact_location=paths.mlflow_artifact_root())
    outer = client.create_run(outer_exp)
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    run = create_stage_run(client, studies[1]["2K"]["experiment_id"], "cross-budget", "cross-budget", {})
    client.set_terminated(run.info.run_id)
    client.set_terminated(outer.info.run_id)
    assert run.info.run_id != outer.info.run_id and run.info.experiment_id == outer_exp
    assert run.data.tags["mlflow.parentRunId"] == outer.info.run_id
