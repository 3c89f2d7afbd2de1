"""The ``tierhpo`` command: one subcommand per pipeline stage.

Subcommands load lazily (click's documented LazyGroup pattern), so ``tierhpo --help`` and
light stages do not pay for importing torch, MLflow and Optuna. Each stage module exposes a
single-command ``app = typer.Typer()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click
import typer
from typer._click import exceptions as typer_click

from common.errors import TierHpoError

# name -> (module, one-line help). Order is the pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "ingest": ("pipelines.ingest", "Validate raw OHLCV (default: bundled S&P 500) into data/raw and data.dvc."),
    "tiers": ("pipelines.tiers", "Build a feature tier dataset (a20/a50/a100) with labels and purged splits."),
    "validate": ("pipelines.validate", "Validate a tier dataset with Great Expectations."),
    "baselines": ("pipelines.baselines", "Logistic regression and gradient boosting on a tier and horizon."),
    "hpo": ("pipelines.hpo", "Two-phase Optuna search for one (tier, budget, horizon) study."),
    "cross-budget": ("pipelines.cross_budget", "Retrain each budget's best hyperparameters at every other budget."),
    "cross-tier": ("pipelines.cross_tier", "Retrain each tier's best hyperparameters on every other tier (same budget)."),
    "promote": ("pipelines.promote", "Calibrate, test once and register the best model of each budget."),
    "select": ("pipelines.select", "Compare the grid's cells, name the best, gate the champion (aliases)."),
    "report": ("pipelines.report", "Write one report for the grid: reports/summary.md leads with its answer."),
    "batch": ("pipelines.batch", "Run a tier's budgets, cross-budget, promote and report; resumable."),
    "predict": ("pipelines.predict", "Print the newest day's calibrated probability from raw OHLCV of recent days."),
    "stores": ("pipelines.stores", "Maintain the stores: `stores relocate --from OLD` after copying stores/."),
    "dashboard": ("pipelines.dashboard", "Start optuna-dashboard on the project's Optuna storage (127.0.0.1:8080)."),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in STAGES.items() if importlib.util.find_spec(spec[0]) is not None}


class LazyStages(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = _available().get(name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        command = typer.main.get_command(module.app)
        command.name = name
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec[1]) for name, spec in _available().items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


cli = LazyStages(name="tierhpo", help="Budget-exact transformer HPO on feature tiers, tracked end to end.")


# typer >= 0.29 vendors its own click: stage commands raise typer's copies of these.
_EXITS = (click.exceptions.Exit, typer.Exit)
_USAGE = (click.ClickException, typer_click.ClickException)
_ABORTS = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)


def app() -> None:
    """Console-script entry point: user errors become one line and exit status 2."""
    try:
        cli.main(prog_name="tierhpo", standalone_mode=False)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _USAGE as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _ABORTS:
        print("tierhpo: aborted", file=sys.stderr)
        sys.exit(130)
    except TierHpoError as exc:
        print(f"tierhpo: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app()
