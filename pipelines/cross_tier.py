"""``tierhpo cross-tier``: do one tier's best hyperparameters transfer to the other tiers at the same budget?

For one budget and horizon, the best trial of every tier's study (``best.json``) is retrained on
every other tier's data: its structure (depth, heads, FFN ratio, patch length) and its training
hyperparameters (lr, weight decay, dropout, batch size, ...) are kept, and the width is re-solved
by ``training.budget.solve`` for the same budget, because the input width (the tier's number of
features) differs between tiers. A structure with no width inside the budget's tolerance on the
target tier is an *infeasible* cell, reported with its reason and never trained.

Seeds, diagonal and verdicts are those of ``tierhpo cross-budget`` (``training.transfer``): each
cell has ``cross_tier.seeds`` fresh seeds (never the study's own: winner's curse), trained in one
batch; the diagonal (a tier's configuration on its own tier) reads the seeds its HPO refit already
trained from ``refit.json`` and trains only the rest. Cell ``(s, t)`` is compared
with the diagonal ``(t, t)`` by Welch's t-test at ``cross_tier.alpha``: *within noise*, *worse* or
*better*. Tier ``s``'s hyperparameters *transfer* when none of its feasible cells is worse; with no
feasible off-diagonal cell the verdict is ``inconclusive``.

Outputs in ``results/cross_tier/<budget>/h<h>/``: ``matrix.json``, ``metrics.json``,
``heatmap.png``, ``hparams.md`` (``training.transfer_run``); one ``cross-tier`` MLflow run (in
the first tier's experiment) with one child run per trained seed. ``--dry-run`` prints the plan and trains and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import typer

from common import config, paths
from common.errors import TierHpoError
from training.study_record import Study, check_study_horizon, load_data, read_study
from training.transfer import Cell, TransferConfig, plan_cells, solver_rules
from training.transfer_run import TransferGrid, plan_or_run, run_transfer

STAGE = "cross-tier"
app = typer.Typer(add_completion=False)


@dataclass
class CrossTierConfig(TransferConfig):
    """``params.yaml`` section ``cross_tier`` (seeds and alpha: ``training.transfer.TransferConfig``)."""

    SECTION: ClassVar[str] = "cross_tier"
    tiers: list[str] = field(default_factory=list)  # empty = the hpo section's tiers


def resolve_tiers(tiers: list[str] | None) -> list[str]:
    """The given tiers, else ``hpo.tiers`` (in that order); at least two, distinct."""
    if not tiers:
        tiers = list((config.load_params().get("hpo") or {}).get("tiers") or [])
    tiers = [str(t).strip() for t in tiers]
    if len(set(tiers)) != len(tiers):
        raise TierHpoError(f"tiers must be distinct, got {tiers}")
    if len(tiers) < 2:
        raise TierHpoError(f"cross-tier needs at least two tiers, got {tiers}; pass --tiers a20,a50 or "
                           "declare them in params.yaml (cross_tier.tiers or hpo.tiers)")
    return tiers


def grid(budget: str, horizon: int, tiers: list[str]) -> TransferGrid:
    return TransferGrid(STAGE, "tier", "on", tiers, {"budget": budget, "horizon": horizon},
                        paths.cross_tier_dir(budget, horizon))


def plan(studies: dict[str, Study], budget: str, cfg: CrossTierConfig, rules: dict[str, Any]) -> list[Cell]:
    """Every (source tier, target tier) cell; trains nothing. ``studies``: tier -> its study at
    ``budget``. Off the diagonal the width is re-solved for the target tier's input width and context."""

    def on_tier(target: str, source: Study) -> tuple[str, int, int]:
        tgt = studies[target].model_config()
        return budget, tgt.n_features, tgt.context_len

    return plan_cells(studies, cfg.seeds, rules, on_tier)


def run_cross_tier(budget: str, horizon: int, tiers: list[str], cfg: CrossTierConfig,
                   data: dict[str, Any]) -> dict[str, Any]:
    """Train (``data``: tier -> its dataset), summarise, log a ``cross-tier`` MLflow run, write the outputs."""
    studies = {t: read_study(t, budget, horizon) for t in tiers}
    return run_transfer(grid(budget, horizon, tiers), cfg, studies, plan(studies, budget, cfg, solver_rules()), data)


@app.command()
def main(
    budget: str = typer.Option(..., help="Parameter budget, e.g. 20K."),
    horizon: int = typer.Option(..., help="Prediction horizon in days."),
    tiers: str = typer.Option(None, help="Comma-separated tiers (default: cross_tier.tiers, else hpo.tiers)."),
    seeds: int = typer.Option(None, help="Seeds per cell (default: cross_tier.seeds)."),
    dry_run: bool = typer.Option(False, "--dry-run", envvar="TIERHPO_DRY_RUN",
                                 help="Print the plan and estimated cost; train and write nothing."),
) -> None:
    """Retrain each tier's best hyperparameters on every other tier (same budget) and judge whether they transfer."""
    from training.budget import parse_budget
    from training.dataset import check_tier, load_data_config

    parse_budget(budget)
    cfg = config.load(CrossTierConfig, "cross_tier", seeds=seeds)
    chosen = resolve_tiers(tiers.split(",") if tiers else cfg.tiers)
    known = load_data_config().tiers
    for tier in chosen:
        check_tier(tier, known)
    check_study_horizon(chosen[0], horizon)
    studies = {t: read_study(t, budget, horizon) for t in chosen}
    plan_or_run(grid(budget, horizon, chosen), cfg, studies, lambda: plan(studies, budget, cfg, solver_rules()),
                lambda: {t: load_data(s) for t, s in studies.items()}, dry_run, typer.echo)
