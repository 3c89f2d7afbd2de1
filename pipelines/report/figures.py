"""The report's figures (``evaluation.plots`` draws them) and its DVC plot data.

The grid's headline heatmaps go to ``reports/headline/`` (declared first). Layout under
``reports/plots/``, named so that the path order DVC shows is the reading order:
each tier in grid order (``01_a20/``, ...),
inside it the scaling plot first, then each budget by parameter count (``01_20K``, ``02_60K``,
``03_200K``: never alphabetical). The promote and cross-budget stages declare their own
reliability diagrams and heatmaps; the report links to those instead of copying them, so each
plot is declared once. ``reports/trials.csv`` is the long table behind the interactive DVC plot
(validation AUC by trial number and by parameter, one row per trial of every study).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import paths
from evaluation import plots
from pipelines.report.params import BASELINE_NAMES

HEADLINE_DIR = "headline"  # reports/headline/: the grid's heatmaps, declared first in dvc.yaml


def tier_dir(index: int, tier: str) -> str:
    return f"{index + 1:02d}_{tier}"


def budget_prefix(index: int, budget: str) -> str:
    return f"{index + 1:02d}_{budget}"


def grid_heatmap_name(horizon: int) -> str:
    """Relative to reports/."""
    return f"{HEADLINE_DIR}/h{horizon}_test_auc.png"


def grid_heatmap(table: dict[str, Any], horizon: int, out: Path) -> Path:
    """``out`` is the report's root (reports/ or its temporary twin)."""
    """Tier x budget test AUC; each cell annotated with its interval and an MCS mark."""
    values, notes = [], []
    for row in table["rows"]:
        values.append([np.nan if c is None else c["test"]["estimate"] for c in row["cells"]])
        notes.append(["n/a" if c is None else
                      f"{c['test']['estimate']:.3f}{' *' if c['in_mcs'] else ''}\n"
                      f"[{c['test']['low']:.3f}, {c['test']['high']:.3f}]" for c in row["cells"]])
    return plots.heatmap(values, [r["tier"] for r in table["rows"]], table["budgets"], out / grid_heatmap_name(horizon),
                         annotations=notes, xlabel="parameter budget", ylabel="feature tier",
                         cbar_label="test AUC", title=f"h{horizon}: test AUC (* = in the model confidence set)")


def link_stage_figures(h: dict[str, Any], tier: str) -> dict[str, Any]:
    """Relative links (from reports/summary.md) to the figures other stages own, where they exist."""
    root = paths.project_root()
    links: dict[str, Any] = {"reliability": {}, "cross_budget": None}
    cross = paths.cross_budget_dir(tier, h["horizon"]) / "heatmap.png"
    if cross.is_file():
        links["cross_budget"] = "../" + cross.relative_to(root).as_posix()
    for st in h["studies"]:
        rel = paths.promote_dir(tier, h["horizon"]) / st["budget"] / "reliability.png"
        if rel.is_file():
            links["reliability"][st["budget"]] = "../" + rel.relative_to(root).as_posix()
    return links


def horizon_figures(h: dict[str, Any], tier: str, tier_index: int, out: Path) -> dict[str, Any]:
    """Draw one (tier, horizon)'s figures under ``out``; returns their paths relative to reports/."""
    base = f"{tier_dir(tier_index, tier)}/h{h['horizon']}"
    (out / base).mkdir(parents=True, exist_ok=True)
    made: dict[str, Any] = {"scaling": None, "studies": {}}
    label = f"{tier} h{h['horizon']}"
    sc = h["scaling"]
    if sc["available"]:
        bl = h["baselines"]
        name = f"{base}/00_scaling.png"
        plots.scaling_plot(sc["budgets"], out / name,
                           baselines={BASELINE_NAMES[n]: r for n, r in bl["baselines"].items()} if bl["available"] else None,
                           power_law=sc["power_law"], title=f"{label}: test AUC", verdict=sc["verdict"])
        made["scaling"] = f"plots/{name}"
    for i, st in enumerate(h["studies"]):
        prefix = f"{base}/{budget_prefix(i, st['budget'])}"
        entry: dict[str, Any] = {"history": None, "coverage": None, "pairs": []}
        if st["hpo"]["history"]:
            plots.optimization_history(st["hpo"]["history"], out / f"{prefix}_history.png",
                                       tol=st["hpo"]["efficiency"]["tol"],
                                       title=f"{tier} {st['budget']} h{h['horizon']}: validation AUC by trial")
            entry["history"] = f"plots/{prefix}_history.png"
        cov = st["coverage"]
        if cov["params"]:
            plots.coverage_heatmap(
                {n: e["counts"] for n, e in cov["params"].items()}, out / f"{prefix}_coverage.png",
                bin_labels={n: e["labels"] for n, e in cov["params"].items()},
                unreachable={n: [b for b in range(e["n_bins"]) if b not in e["reachable"]]
                             for n, e in cov["params"].items()},
                title=f"Coverage, {tier} {st['budget']} h{h['horizon']} ({cov['n_explored']} explored trials)")
            entry["coverage"] = f"plots/{prefix}_coverage.png"
        for pair in cov["pairs"]:
            a, b = pair["params"]
            counts = np.array(pair["counts"], dtype=np.float64)
            for r, c in pair["unreachable"]:
                counts[r, c] = np.nan  # grey: no feasible architecture there
            name = f"{prefix}_coverage_{a}_x_{b}.png"
            plots.heatmap(counts, pair["row_labels"], pair["col_labels"], out / name, fmt="{:.0f}", cmap="Blues",
                          vmin=0, xlabel=b, ylabel=a, cbar_label="explored trials",
                          title=f"{tier} {st['budget']} h{h['horizon']}: {a} x {b}\n0 = never explored, "
                                "n/a = unreachable")
            entry["pairs"].append({"params": [a, b], "path": f"plots/{name}"})
        made["studies"][st["budget"]] = entry
    made.update(link_stage_figures(h, tier))
    return made


def trials_table(studies: list[tuple[str, int, Any]]) -> pd.DataFrame:
    """One row per finished trial of every study: ``cell, tier, budget, horizon, trial, state, val_auc, param_*``.

    ``studies``: ``(tier, horizon, inputs.Study)`` in grid order.
    """
    rows = []
    for tier, horizon, s in studies:
        for t in s.study.get_trials(deepcopy=False):
            if not t.state.is_finished():
                continue
            rows.append({"cell": f"{tier}/{s.budget}/h{horizon}", "tier": tier, "budget": s.budget,
                         "horizon": horizon, "trial": t.number, "state": t.state.name,
                         "val_auc": t.value, **{f"param_{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)
