"""``tierhpo batch [--tier a50]``: one tier's whole search, or (no ``--tier``) the whole tier x budget grid, resumable.

Replaces the original study's shell script. Every step is a ``dvc.yaml`` stage run through
``dvc repro <stage>``, so DVC decides what is already done (a second run skips finished
stages) and records every result in ``dvc.lock``; an interrupted HPO stage resumes its Optuna
study trial by trial, because the study name is stable. Order: the tier's HPO studies by
budget (smallest first, e.g. 2M -> 20M -> 200M), then cross-budget and promote. The grid-wide
stages (select, then the one report) compare every tier, so they run only in the grid mode (no
``--tier``), after every tier's stages: a one-tier batch stops after its promotions.

The batch adds no logic of its own beyond the order and the progress line; it reads no
``params.yaml`` section, because the stage list in ``dvc.yaml`` (expanded from ``hpo``) is the
plan.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Annotated

import typer

from common import paths
from common.errors import TierHpoError
from training.budget import parse_budget

# Stage families in batch order; the HPO family is ordered by budget within it. Grid-wide
# families (cross_tier, select: matrix over budget/horizon, not tier) run once after every tier.
ORDER = ("hpo", "cross_budget", "promote")
GRID_ORDER = ("cross_tier", "select", "report")


@dataclass(frozen=True)
class Step:
    stage: str  # DVC stage name, e.g. "hpo@a50-20K-1"
    family: str  # "hpo", "cross_budget", ...
    label: str  # what the progress line says


def _matrix_values(name: str) -> list[str]:
    return name.split("@", 1)[1].split("-") if "@" in name else []


def plan_grid(stage_names: list[str]) -> list[Step]:
    """Pure: every tier's steps (tiers in dvc.yaml order), then the grid-wide stages (cross-tier, select)."""
    tiers: list[str] = []
    for name in stage_names:
        values = _matrix_values(name)
        if name.split("@", 1)[0] == "hpo" and values and values[0] not in tiers:
            tiers.append(values[0])
    if not tiers:
        raise TierHpoError("no HPO stage in dvc.yaml; declare params.yaml hpo.tiers and run again")
    steps = [step for tier in tiers for step in plan(tier, stage_names)]
    grid = {family: [] for family in GRID_ORDER}
    for name in stage_names:
        family = name.split("@", 1)[0]
        if family in grid:
            label = " ".join([family.replace("_", "-"), *_matrix_values(name)]) if "@" in name else f"{family} (grid)"
            grid[family].append(Step(stage=name, family=family, label=label))
    return steps + [step for family in GRID_ORDER for step in grid[family]]


def plan(tier: str, stage_names: list[str]) -> list[Step]:
    """Pure: the ordered steps of ``tier`` among the pipeline's stage names."""
    steps: dict[str, list[tuple[tuple, Step]]] = {family: [] for family in ORDER}
    for name in stage_names:
        family = name.split("@", 1)[0]
        values = _matrix_values(name)
        if family not in steps or not values or values[0] != tier:
            continue
        if family == "hpo":
            _, budget, horizon = values
            key = (parse_budget(budget), int(horizon))
            label = f"hpo {tier} budget {budget} h{horizon}"
        else:
            key = tuple(values[1:])
            label = " ".join([family.replace("_", "-"), *values])
        steps[family].append((key, Step(stage=name, family=family, label=label)))
    ordered = [step for family in ORDER for _, step in sorted(steps[family], key=lambda kv: kv[0])]
    if not any(step.family == "hpo" for step in ordered):
        raise TierHpoError(
            f"no HPO stage for tier '{tier}' in dvc.yaml; add it to params.yaml hpo.tiers "
            f"(e.g. dvc exp run -S 'hpo.tiers=[{tier}]') and run again"
        )
    return ordered


def _dvc() -> str:
    exe = shutil.which("dvc") or os.path.join(os.path.dirname(sys.executable), "dvc")
    if not os.path.exists(exe):
        raise TierHpoError("the dvc executable was not found; run `make env` (it installs DVC into .venv)")
    return exe


def stage_names() -> list[str]:
    result = subprocess.run(
        [_dvc(), "stage", "list", "--name-only"], cwd=paths.project_root(), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise TierHpoError(f"dvc stage list failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout.split()


def run(steps: list[Step]) -> None:
    """Run the steps in order; stop at the first failure with the stage named."""
    hpo_total = sum(step.family == "hpo" for step in steps)
    hpo_done = 0
    start = time.monotonic()
    for index, step in enumerate(steps, 1):
        if step.family == "hpo":
            hpo_done += 1
            where = f"budget {hpo_done}/{hpo_total}"
        else:
            where = step.family.replace("_", "-")
        print(f"[batch {index}/{len(steps)} | {where}] {step.label}", flush=True)
        code = subprocess.run([_dvc(), "repro", step.stage], cwd=paths.project_root()).returncode
        if code != 0:
            raise TierHpoError(
                f"stage {step.stage} failed (exit {code}); fix the cause above and run the batch again "
                "to resume from this stage"
            )
    print(f"[batch] {len(steps)} steps done in {time.monotonic() - start:.0f}s", flush=True)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    tier: Annotated[str, typer.Option(help="Feature tier, e.g. a50 (default: the whole hpo.tiers grid).")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the steps, run nothing.")] = False,
) -> None:
    """Run one tier's HPO budgets in order, then cross-budget, promote and report (resumable); no --tier: the grid."""
    steps = plan(tier, stage_names()) if tier else plan_grid(stage_names())
    if dry_run:
        for index, step in enumerate(steps, 1):
            print(f"{index}. {step.stage}")
        return
    run(steps)
