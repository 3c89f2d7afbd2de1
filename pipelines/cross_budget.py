"""``tierhpo cross-budget``: do one budget's best hyperparameters transfer to the other budgets?

For one tier and horizon, the best trial of every budget's study (``best.json``) is retrained at
every other budget: its structure (depth, heads, FFN ratio, patch length) is kept, the width is
re-solved by ``training.budget.solve`` for the target budget, and its training hyperparameters
(lr, weight decay, dropout, batch size, ...) are kept. A structure with no width inside the
budget's tolerance is reported as an *infeasible* cell, never trained.

Seeds. Each cell has ``seeds`` fresh seeds derived from the source study's seed
(``training.seeds.fresh_seeds``, never the study's own seed), all of a cell's seeds trained in
one batch (``training.batched.train_batch``: same structure, different seeds). The diagonal cell
(a budget's hyperparameters at its own budget) has fresh seeds too: the study's own result would
carry the winner's curse (that seed's val AUC is the maximum over the search, so it is biased
upwards). Its seeds are the ones the HPO refit trained (same derivation, same configuration, same
data), so their val AUCs are read from the study's ``refit.json`` (``seeds_from_refit`` in
``matrix.json``), and only seeds beyond ``hpo.refit_seeds`` are trained here.

Transfer verdict. Cell ``(s, t)`` holds the validation AUCs of budget ``s``'s hyperparameters
trained at budget ``t``, one per seed. They are compared with the diagonal ``(t, t)``, the target
budget's own best, by Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``, two-sided):
the cell is *within noise* when ``p >= alpha``, otherwise *worse* or *better* by the sign of
``gap = mean(s, t) - mean(t, t)``. Fewer than two finite seeds on either side: no test
(``p_value`` None), *within noise*. Both sides without any seed-to-seed spread: ``p`` is 1 when
the means are equal, else 0. Budget ``s``'s hyperparameters *transfer* when none of its feasible
cells is worse; with no feasible off-diagonal cell the verdict is ``inconclusive``.

Outputs (``training.transfer_run``, shared with ``tierhpo cross-tier``) in
``results/cross_budget/<tier>/h<h>/``: ``matrix.json``, ``metrics.json``, ``heatmap.png``,
``hparams.md``; one ``cross-budget`` MLflow run with one child run per trained seed.
``--dry-run`` prints the plan (cells, solved configs, seeds read from refit.json and seeds to
train, estimated cost from the studies' recorded trial durations) and trains and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import typer

from common import config, paths
from common.errors import TierHpoError
from training.study_record import Study, check_study_horizon, load_data, read_study, resolve_budgets
from training.transfer import Cell, TransferConfig, plan_cells, solver_rules
from training.transfer_run import TransferGrid, plan_or_run, run_transfer

STAGE = "cross-budget"
app = typer.Typer(add_completion=False)


@dataclass
class CrossBudgetConfig(TransferConfig):
    """``params.yaml`` section ``cross_budget`` (seeds and alpha: ``training.transfer.TransferConfig``)."""

    SECTION: ClassVar[str] = "cross_budget"
    budgets: list[str] = field(default_factory=list)  # empty = the hpo section's budgets


def grid(tier: str, horizon: int, budgets: list[str]) -> TransferGrid:
    return TransferGrid(STAGE, "budget", "at", budgets, {"tier": tier, "horizon": horizon},
                        paths.cross_budget_dir(tier, horizon))


def plan(studies: dict[str, Study], cfg: CrossBudgetConfig, rules: dict[str, Any]) -> list[Cell]:
    """Every (source, target) cell: the source's structure re-solved at the target budget, same inputs."""
    first = next(iter(studies.values())).model_config()
    for study in studies.values():
        src = study.model_config()
        if (src.n_features, src.context_len) != (first.n_features, first.context_len):
            raise TierHpoError(f"studies of {study.tier} h{study.horizon} disagree on features/context_len; rerun them")

    def at_budget(target: str, source: Study) -> tuple[str, int, int]:
        return target, first.n_features, first.context_len

    return plan_cells(studies, cfg.seeds, rules, at_budget)


def run_cross_budget(tier: str, horizon: int, budgets: list[str], cfg: CrossBudgetConfig, data: Any) -> dict[str, Any]:
    """Train, summarise, log to MLflow under a ``cross-budget`` run and write the outputs atomically."""
    studies = {b: read_study(tier, b, horizon) for b in budgets}
    return run_transfer(grid(tier, horizon, budgets), cfg, studies, plan(studies, cfg, solver_rules()), data)


@app.command()
def main(
    tier: str = typer.Option(..., help="Feature tier, e.g. a50."),
    horizon: int = typer.Option(..., help="Prediction horizon in days."),
    budgets: str = typer.Option(None, help="Comma-separated budgets (default: cross_budget.budgets, else hpo.budgets)."),
    seeds: int = typer.Option(None, help="Seeds per cell (default: cross_budget.seeds)."),
    dry_run: bool = typer.Option(False, "--dry-run", envvar="TIERHPO_DRY_RUN",
                                 help="Print the plan and estimated cost; train and write nothing."),
) -> None:
    """Retrain each budget's best hyperparameters at every other budget and judge whether they transfer."""
    from training.dataset import check_tier, load_data_config

    check_tier(tier, load_data_config().tiers)
    check_study_horizon(tier, horizon)
    cfg = config.load(CrossBudgetConfig, "cross_budget", seeds=seeds)
    chosen = resolve_budgets(budgets.split(",") if budgets else cfg.budgets)
    if len(chosen) < 2:
        raise TierHpoError(f"cross-budget needs at least two budgets, got {chosen}")
    studies = {b: read_study(tier, b, horizon) for b in chosen}
    plan_or_run(grid(tier, horizon, chosen), cfg, studies, lambda: plan(studies, cfg, solver_rules()),
                lambda: load_data(studies[chosen[0]]), dry_run, typer.echo)
