"""``tierhpo report``: one report for the whole grid (every tier, budget and horizon with results).

Writes into ``reports/``, every file atomically and only after every input was read:

* ``summary.md``: the answer first (best model vs each baseline, verdicts, MCS, caveats), then
  the tier x budget table and heatmap, then one section per tier (templates/*.md.j2);
* ``report.json``: every number behind it; ``metrics.json``: the headline (DVC metrics);
* ``headline/``: the grid's heatmap per horizon; ``plots/``: the figures in reading order; ``trials.csv``: every trial (interactive DVC plot);

and logs the same files to MLflow as one ``report`` run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

from common import atomic, config, paths, provenance
from common.errors import TierHpoError, shorten
from pipelines.report import figures, grid, inputs, render, sections, tracking
from pipelines.report.inputs import HorizonInputs, Missing, budget_order
from pipelines.report.params import MIN_IMPORTANCE_TRIALS, ReportParams
from training.selection_record import SelectionRecord

app = typer.Typer(add_completion=False)


def load_all(tiers: list[str], cfg: ReportParams) -> tuple[dict[str, list[HorizonInputs]], dict[int, Any]]:
    """Every input of the grid, checked before anything is written."""
    loaded = {t: [inputs.load_inputs(t, h, cfg.partial) for h in inputs.discover_horizons(t)] for t in tiers}
    horizons = sorted({hi.horizon for his in loaded.values() for hi in his})
    selections = {h: inputs.load_selection(h, cfg.partial) for h in horizons}
    for rec in selections.values():
        if isinstance(rec, SelectionRecord):
            check_selection(rec, loaded)
    return loaded, selections


def load_cross_tiers(loaded: dict[str, list[HorizonInputs]], horizons: list[int],
                     partial: bool) -> dict[int, dict[str, Any]]:
    """horizon -> budget -> cross-tier matrix (or Missing), for each budget studied on two tiers or more."""
    out: dict[int, dict[str, Any]] = {}
    for h in horizons:
        by_budget: dict[str, dict[str, Any]] = {}
        for tier, his in loaded.items():
            for hi in his:
                if hi.horizon == h:
                    for s in hi.studies:
                        by_budget.setdefault(s.budget, {})[tier] = s
        out[h] = {b: inputs.load_cross_tier(b, h, studies, partial)
                  for b, studies in sorted(by_budget.items(), key=lambda kv: budget_order(kv[0]))
                  if len(studies) >= 2}
    return out


def check_selection(rec: SelectionRecord, loaded: dict[str, list[HorizonInputs]]) -> None:
    """The record must describe the studies on disk (else the select stage is stale)."""
    have = {(t, s.budget) for t, his in loaded.items() for hi in his if hi.horizon == rec.horizon for s in hi.studies}
    stale = sorted(c.key for c in rec.cells if (c.tier, c.budget) not in have)
    if stale:
        raise TierHpoError(f"results/select/h{rec.horizon}/verdicts.json names cell(s) {stale} without HPO results; "
                           f"rerun `tierhpo select --horizon {rec.horizon}`")


def build(loaded: dict[str, list[HorizonInputs]], selections: dict[int, Any], cfg: ReportParams,
          out: Path) -> dict[str, Any]:
    """Analyse, draw and render into ``out`` (a fresh directory); returns the report dict."""
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True)
    (out / figures.HEADLINE_DIR).mkdir()
    tiers = list(loaded)
    budgets = sorted({s.budget for his in loaded.values() for hi in his for s in hi.studies}, key=budget_order)
    symbol = next((s.best.get("symbol") for his in loaded.values() for hi in his for s in hi.studies
                   if s.best.get("symbol")), "")
    grid_part = []
    cross_tiers = load_cross_tiers(loaded, list(selections), cfg.partial)
    for h, rec in selections.items():
        transfer = [{"budget": b, "available": False, "reason": m.line()} if isinstance(m, Missing)
                    else {"budget": b, "available": True, **grid.transfer_table(m)}
                    for b, m in cross_tiers.get(h, {}).items()]
        if isinstance(rec, Missing):
            grid_part.append({"horizon": h, "available": False, "reason": rec.line(), "cross_tier": transfer})
            continue
        table = grid.table(rec)
        figures.grid_heatmap(table, h, out)
        grid_part.append({"horizon": h, "available": True, "answer": grid.answer(rec), "table": table,
                          "heatmap": figures.grid_heatmap_name(h), "cross_tier": transfer})
    symbol = next((r.symbol for r in selections.values() if isinstance(r, SelectionRecord)), symbol)
    tier_reports = []
    for i, tier in enumerate(tiers):
        horizons = []
        for hi in loaded[tier]:
            h = sections.analyse(hi, cfg)
            h["figures"] = figures.horizon_figures(h, tier, i, plot_dir)
            horizons.append(h)
        tier_reports.append({"tier": tier, "horizons": horizons})
    report = {"symbol": symbol, "tiers": tiers, "budgets": budgets, "horizons": list(selections),
              "params": config.to_dict(cfg), "grid": grid_part, "tier_reports": tier_reports,
              **provenance.run_tags()}
    report["headline"] = grid.headline([r for r in selections.values() if isinstance(r, SelectionRecord)])
    (out / "summary.md").write_text(render_summary(report))
    dump = {k: v for k, v in report.items()}
    (out / "report.json").write_text(json.dumps(dump, indent=2, sort_keys=True, default=atomic.json_default) + "\n")
    (out / "metrics.json").write_text(json.dumps(report["headline"], indent=2, sort_keys=True,
                                                 default=atomic.json_default) + "\n")
    figures.trials_table([(t, hi.horizon, s) for t in tiers for hi in loaded[t] for s in hi.studies]
                         ).to_csv(out / "trials.csv", index=False)
    return report


def render_summary(report: dict[str, Any]) -> str:
    return render.render("summary", min_importance_trials=MIN_IMPORTANCE_TRIALS,
                         calibration_metrics=sections.CALIBRATION_METRICS, **report)


def install(built: Path, target: Path) -> None:
    """Move each built file into ``reports/`` atomically (a reader sees old or new, never half)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in tracking.REPORT_FILES:
        src = built / name
        if src.is_dir():
            atomic.write_with(target / name, lambda p, src=src: shutil.copytree(src, p))
        elif src.is_file():
            atomic.write_with(target / name, lambda p, src=src: shutil.copyfile(src, p))


def run(tiers: list[str], cfg: ReportParams, log_mlflow: bool = True) -> Path:
    loaded, selections = load_all(tiers, cfg)
    if log_mlflow:
        tracking.resolve_experiment(tiers[0])
    target = paths.reports_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".report-") as tmp:
        report = build(loaded, selections, cfg, Path(tmp) / "out")
        install(Path(tmp) / "out", target)
    if log_mlflow:
        report["mlflow_run_id"] = tracking.log_to_mlflow(report, target)
    return target


def choose_tiers(tier: str | None, cfg: ReportParams) -> list[str]:
    known = list(config.section("data").get("tiers") or [])
    if tier:
        if known and tier not in known:
            raise TierHpoError(f"unknown tier(s) {shorten(tier)}; choose one of {', '.join(known)} "
                               "(data.tiers in params.yaml)")
        inputs.discover_horizons(tier)  # a clear error when it has no results
        return [tier]
    if cfg.tiers:
        unknown = [t for t in cfg.tiers if known and t not in known]
        if unknown:
            raise TierHpoError(f"unknown tier(s) {', '.join(map(shorten, unknown))}; choose one of {', '.join(known)} "
                               "(data.tiers in params.yaml)")
        return list(cfg.tiers)
    return inputs.discover_tiers(known)


@app.command()
def main(
    tier: str | None = typer.Option(None, "--tier", help="Report one tier only (default: the whole grid)."),
    all_tiers: bool = typer.Option(False, "--all", help="Every tier of data.tiers with HPO results (the default "
                                                        "when report.tiers is empty)."),
    partial: bool = typer.Option(False, "--partial",
                                 help="Write the report even if select/promote/cross-budget/baselines outputs are "
                                      "missing; those sections say 'Not available'."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Write reports/ only; do not log a report run."),
) -> None:
    """Write one grid report to reports/summary.md (+ report.json, metrics.json, plots/, trials.csv)."""
    if tier and all_tiers:
        raise TierHpoError("pass either --tier or --all, not both")
    cfg = config.load(ReportParams, "report", partial=partial or None)
    tiers = inputs.discover_tiers(list(config.section("data").get("tiers") or [])) if all_tiers \
        else choose_tiers(tier, cfg)
    target = run(tiers, cfg, log_mlflow=not no_mlflow)
    typer.echo(f"report: wrote {target / 'summary.md'}")
