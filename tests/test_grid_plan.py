"""`tierhpo batch` with no --tier plans the whole tier x budget grid, then the grid-wide stages."""

from __future__ import annotations

from pipelines.batch import plan, plan_grid

NAMES = ["tiers@a20", "hpo@a50-60K-1", "hpo@a50-20K-1", "hpo@a20-20K-1", "cross_budget@a50-1", "cross_budget@a20-1",
         "promote@a50-20K-1", "promote@a20-20K-1", "report", "select@1"]


def test_grid_runs_every_tier_then_select_then_one_report():
    stages = [s.stage for s in plan_grid(NAMES)]
    assert stages[:4] == ["hpo@a50-20K-1", "hpo@a50-60K-1", "cross_budget@a50-1", "promote@a50-20K-1"]
    assert stages[-2:] == ["select@1", "report"]
    assert stages.count("report") == 1
    assert "hpo@a20-20K-1" in stages and len(stages) == len(NAMES) - 1  # tiers@ is not a batch step


def test_one_tier_stops_after_its_promotions():
    """select and the report compare every tier: a one-tier batch cannot run them."""
    assert [s.stage for s in plan("a20", NAMES)] == ["hpo@a20-20K-1", "cross_budget@a20-1", "promote@a20-20K-1"]


def test_cross_tier_runs_once_per_budget_after_every_tier_and_before_select():
    names = [*NAMES, "cross_tier@20K-1", "cross_tier@60K-1"]
    stages = [s.stage for s in plan_grid(names)]
    assert stages[-4:] == ["cross_tier@20K-1", "cross_tier@60K-1", "select@1", "report"]
    assert [s.label for s in plan_grid(names) if s.family == "cross_tier"] == ["cross-tier 20K 1", "cross-tier 60K 1"]
