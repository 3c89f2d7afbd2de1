"""Cross-tier validation: the plan on fake studies (re-solved widths, infeasible reasons), the
verdict rule, the dry run, and one tiny real run on two synthetic tiers of different input widths."""

from __future__ import annotations

import json

import mlflow
import pytest
from fake_study import HORIZON, make_study, shared_studies, untrained_study
from typer.testing import CliRunner

from common import paths
from common.errors import TierHpoError
from pipelines import cross_tier as ct
from training.budget import Architecture
from training.seeds import fresh_seeds
from training.synthetic import synthetic_tier
from training.transfer import Cell, infeasible_reason, summarise
from training.transfer_run import format_plan

SMALL = Architecture(n_layers=2, n_heads=2, d_ff_ratio=2.0, patch_len=4)  # feasible at 8K with 6 or 12 features
WIDE_HEADS = Architecture(n_layers=2, n_heads=4, d_ff_ratio=2.0, patch_len=8)  # 8K: feasible at 6, not 12 features
BUDGET = "8K"
TIERS = ["a20", "a50"]
N_FEATURES = {"a20": 6, "a50": 12}
RULES = {"tolerance": 0.1, "min_head_dim": 4}


def fake_study(tier: str, arch: Architecture, seed: int, directory):
    return untrained_study(tier, BUDGET, arch, seed, directory, n_features=N_FEATURES[tier], rules=RULES)


def test_plan_resolves_the_width_per_target_tier_and_names_why_a_cell_is_infeasible(tmp_path):
    studies = {"a20": fake_study("a20", WIDE_HEADS, 0, tmp_path / "a20"),
               "a50": fake_study("a50", SMALL, 5, tmp_path / "a50")}
    cells = {(c.source, c.target): c for c in ct.plan(studies, BUDGET, ct.CrossTierConfig(seeds=2), RULES)}
    assert set(cells) == {(s, t) for s in TIERS for t in TIERS}
    # Diagonal: the study's own configuration, fresh seeds; no refit.json, so all of them are trained.
    assert cells[("a20", "a20")].model_config == studies["a20"].model_config()
    assert cells[("a20", "a20")].seeds == fresh_seeds(0, 2) and 0 not in cells[("a20", "a20")].seeds
    assert cells[("a20", "a20")].to_train == fresh_seeds(0, 2)
    # a50's structure on a20's 6 features: re-solved within the budget, a20's input width.
    moved = cells[("a50", "a20")]
    assert moved.feasible and moved.model_config.n_features == 6 and abs(moved.n_params - 8000) <= 800
    assert moved.model_config.n_heads == 2 and moved.seeds == fresh_seeds(5, 2)
    # a20's 4-head structure cannot fit 12 features into 8K: infeasible, with the reason.
    bad = cells[("a20", "a50")]
    assert not bad.feasible and bad.to_train == []
    assert "n_heads=4" in bad.reason and "12 input features" in bad.reason and "10%" in bad.reason
    text = format_plan(ct.grid(BUDGET, HORIZON, TIERS), list(cells.values()))
    assert "a20 hp on a50 infeasible: no d_model" in text and "total: 6 training runs (0 seeds" in text


def test_infeasible_reason_names_a_patch_longer_than_the_context():
    arch = Architecture(n_layers=1, n_heads=1, d_ff_ratio=1.0, patch_len=32)
    assert infeasible_reason(arch, BUDGET, 6, 16, RULES) == "patch_len 32 > context_len 16"


def cell(source, target, aucs, feasible=True, reason=None):
    from training.model import ModelConfig

    shape = ModelConfig(n_features=2, context_len=4, patch_len=2, d_model=4, n_layers=1, n_heads=1, d_ff=4)
    return Cell(source, target, shape if feasible else None, 1, list(range(len(aucs))),
                val_auc=dict(enumerate(aucs)), reason=reason)


def test_verdicts_against_the_target_tiers_diagonal():
    cfg = ct.CrossTierConfig(seeds=3, alpha=0.05)
    tiers = ["a20", "a50", "a100"]
    cells = [
        cell("a20", "a20", [0.60, 0.61, 0.62]), cell("a20", "a50", [0.645, 0.65, 0.655]),
        cell("a20", "a100", [], feasible=False, reason="too wide"),
        cell("a50", "a20", [0.50, 0.51, 0.52]), cell("a50", "a50", [0.65, 0.66, 0.67]),
        cell("a50", "a100", [0.70, 0.705, 0.71]),
        cell("a100", "a20", [0.60, 0.61, 0.62]), cell("a100", "a50", [0.66, 0.665, 0.67]),
        cell("a100", "a100", [0.64, 0.65, 0.66]),
    ]
    summary = summarise(cells, tiers, cfg)
    by = {(c["source"], c["target"]): c for c in summary["cells"]}
    assert by[("a20", "a50")]["verdict"] == "within noise"
    assert by[("a20", "a100")]["verdict"] == "infeasible" and by[("a20", "a100")]["reason"] == "too wide"
    assert by[("a50", "a20")]["verdict"] == "worse" and by[("a50", "a100")]["verdict"] == "better"
    assert by[("a100", "a20")]["verdict"] == "within noise"
    t = summary["transfer"]
    assert t["a20"]["transfers"] is True and "infeasible at ['a100']" in t["a20"]["summary"]
    assert t["a50"]["transfers"] is False and t["a100"]["transfers"] is True
    with pytest.raises(TierHpoError, match="alpha"):
        ct.CrossTierConfig(alpha=0.0)
    with pytest.raises(TierHpoError, match="seeds"):
        ct.CrossTierConfig(seeds=1)
    with pytest.raises(TierHpoError, match="at least two tiers"):
        ct.resolve_tiers(["a20"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Two real 8K studies on synthetic tiers of 6 (a20, with a 2-seed refit) and 12 (a50) features, built once."""
    def make():
        data = {t: synthetic_tier(n_days=1500, n_features=N_FEATURES[t], context_len=16, horizon=HORIZON,
                                  seed=i, tier=t) for i, t in enumerate(TIERS)}
        return data, {"a20": make_study(data["a20"], BUDGET, WIDE_HEADS, lr=3e-3, dropout=0.1, seed=0, refit_seeds=2),
                      "a50": make_study(data["a50"], BUDGET, SMALL, lr=1e-3, dropout=0.2, seed=5)}

    return shared_studies(tmp_path_factory, "xt", {
        "data": {"symbol": "SYN", "tiers": TIERS, "horizons": [HORIZON], "context_len": 16},
        "cross_tier": {"seeds": 2, "alpha": 0.05, "tiers": []},
        "hpo": {"tiers": TIERS, "budgets": [BUDGET]},
    }, make)


@pytest.fixture
def studies(shared, monkeypatch):
    return shared.use(monkeypatch)


def test_dry_run_trains_and_writes_nothing(studies, monkeypatch):
    monkeypatch.setattr("training.batched.train_batch", lambda *a, **k: pytest.fail("--dry-run must not train"))
    result = CliRunner().invoke(ct.app, ["--budget", BUDGET, "--horizon", str(HORIZON), "--dry-run"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "a20 hp on a50 infeasible: no d_model" in result.output
    assert f"seeds {fresh_seeds(0, 2)} from refit.json" in result.output  # a20's diagonal is its refit
    assert "total: 4 training runs (2 seeds read from refit.json)" in result.output
    assert not paths.cross_tier_dir(BUDGET, HORIZON).exists()
    missing = CliRunner().invoke(ct.app, ["--budget", "20K", "--horizon", str(HORIZON), "--dry-run"])
    assert isinstance(missing.exception, TierHpoError)
    assert "tierhpo hpo --tier a20 --budget 20K --horizon 1" in str(missing.exception)


def test_tiny_real_run_writes_the_matrix_and_one_mlflow_run(studies):
    data, best = studies
    doc = ct.run_cross_tier(BUDGET, HORIZON, TIERS, ct.CrossTierConfig(seeds=2), data)
    out = paths.cross_tier_dir(BUDGET, HORIZON)
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["tiers"] == TIERS and saved["budget"] == BUDGET and saved["n_seeds"] == 2
    cells = {(c["source"], c["target"]): c for c in saved["cells"]}
    assert cells[("a20", "a50")]["verdict"] == "infeasible" and "12 input features" in cells[("a20", "a50")]["reason"]
    moved = cells[("a50", "a20")]
    assert moved["model_config"]["n_features"] == 6 and moved["n"] == 2
    assert moved["verdict"] in ("within noise", "worse", "better") and 0.0 <= moved["p_value"] <= 1.0
    assert cells[("a20", "a20")]["verdict"] == "diagonal" and 0 not in cells[("a20", "a20")]["seeds"]
    assert cells[("a20", "a20")]["seeds_from_refit"] == fresh_seeds(0, 2) == cells[("a20", "a20")]["seeds"]
    assert cells[("a50", "a50")]["seeds_from_refit"] == [] and cells[("a50", "a50")]["n"] == 2
    assert saved["transfer"]["a20"]["transfers"] is None
    assert saved["transfer"]["a50"]["transfers"] == (moved["verdict"] != "worse")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/auc"]["a50_hp"]["on_a20"] == pytest.approx(moved["mean"])
    assert (out / "heatmap.png").stat().st_size > 5000 and "Infeasible cells" in (out / "hparams.md").read_text()

    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "cross-tier"
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 2 + 2  # a50's diagonal + the one feasible off-diagonal cell; a20's diagonal is its refit
    assert {c.data.tags["budget"] for c in children} == {BUDGET}
