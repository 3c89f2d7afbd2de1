"""Shared PNG plots: reliability diagram, annotated heatmap, scaling plot, coverage heatmap, optimisation history.

Every function draws with matplotlib's Agg backend (no display needed), writes the PNG
atomically (``common.atomic``: a failed plot never leaves a half-written file), closes the
figure and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from common import atomic  # noqa: E402
from evaluation.metrics import DEFAULT_ECE_BINS  # noqa: E402

DPI = 110


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically and close it."""
    try:
        fig.tight_layout()
        atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return Path(path)


def reliability_diagram(
    y_true: Any,
    probs: Mapping[str, Any],
    path: str | Path,
    *,
    n_bins: int = DEFAULT_ECE_BINS,
    strategy: str = "uniform",
    title: str = "",
) -> Path:
    """Observed positive rate against mean predicted probability, one curve per entry of ``probs``
    (e.g. ``{"raw": p_raw, "calibrated (isotonic)": p_cal}``), over ``n_bins`` bins
    (``sklearn.calibration.calibration_curve``; ``strategy`` "uniform" matches the ECE bins).
    The lower panel shows how many predictions fall in each bin."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    if not probs:
        raise ValueError("reliability_diagram needs at least one probability series")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, n_bins + 1)
    for label, p in probs.items():
        p = np.asarray(p, dtype=np.float64).ravel()
        if len(p) != len(y):
            raise ValueError(f"reliability_diagram: '{label}' has {len(p)} predictions for {len(y)} labels")
        frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
        top.plot(mean_pred, frac_pos, marker="o", ms=4, label=label)
        bottom.hist(p, bins=edges, histtype="step", lw=1.5, label=label)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed positive rate", title=title or "Reliability diagram")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.set(xlabel="mean predicted probability", ylabel="count")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)


def heatmap(
    values: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    *,
    annotations: Sequence[Sequence[str]] | None = None,
    fmt: str = "{:.3f}",
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cbar_label: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Annotated heatmap of ``values`` (rows x cols); NaN cells are grey and labelled "n/a".

    ``annotations`` (same shape, strings) replaces the default ``fmt`` text, e.g. "0.712\\n±0.004".
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 2 or data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap: values {data.shape} do not match {len(row_labels)} x {len(col_labels)} labels")
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * data.shape[1], 1.4 + 0.7 * data.shape[0]))
    masked = np.ma.masked_invalid(data)
    colours = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(masked, cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    cbar = fig.colorbar(image, ax=ax)
    if cbar_label:
        cbar.set_label(cbar_label)
    ax.set_xticks(range(len(col_labels)), labels=[str(c) for c in col_labels], rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=[str(r) for r in row_labels])
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if annotations is not None:
                text = annotations[i][j]
            else:
                text = fmt.format(data[i, j]) if np.isfinite(data[i, j]) else "n/a"
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color=_text_colour(image, data[i, j]))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return save_figure(fig, path)


def _text_colour(image: Any, value: float) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell's colour)."""
    if not np.isfinite(value):
        return "black"
    r, g, b, _ = image.cmap(image.norm(value))
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"


def scaling_plot(
    points: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    power_law: Mapping[str, Any] | None = None,
    title: str = "",
    verdict: str = "",
) -> Path:
    """Test AUC against real parameter count (log x) with the 95 % interval of each budget.

    ``points``: dicts with ``budget``, ``n_params``, ``auc``, ``lo``, ``hi``. ``baselines``:
    name -> ``{"auc", "lo", "hi"}``, drawn as horizontal bands. ``power_law``: the fitted
    ``evaluation.scaling.power_law_fit`` result, drawn when ``fitted``.
    """
    if not points:
        raise ValueError("scaling_plot needs at least one budget")
    pts = sorted(points, key=lambda r: r["n_params"])
    n = np.array([p["n_params"] for p in pts], dtype=np.float64)
    auc = np.array([p["auc"] for p in pts])
    err = np.array([[p["auc"] - p["lo"] for p in pts], [p["hi"] - p["auc"] for p in pts]])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(n, auc, yerr=err, fmt="o-", capsize=5, lw=1.5, label="transformer (95 % CI)")
    for p in pts:
        ax.annotate(p["budget"], (p["n_params"], p["hi"]), textcoords="offset points", xytext=(0, 5),
                    ha="center", fontsize="small")
    for k, (name, b) in enumerate((baselines or {}).items()):
        colour = f"C{k + 2}"
        ax.axhline(b["auc"], color=colour, ls="--", lw=1, label=f"{name} (95 % CI)")
        ax.axhspan(b["lo"], b["hi"], color=colour, alpha=0.12)
    if power_law and power_law.get("fitted"):
        grid = np.geomspace(n.min(), n.max(), 100)
        fit = 0.5 + power_law["a"] * (grid / power_law["n_min"]) ** power_law["b"]
        ax.plot(grid, fit, color="black", lw=1, ls=":",
                label=f"power law, b = {power_law['b']:.3f} ± {power_law['b_se']:.3f}")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.15)  # room for the budget labels above the error bars
    ax.set(xlabel="real parameter count", ylabel="test AUC",
           title=title + (f"\nverdict: {verdict}" if verdict else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="best")
    return save_figure(fig, path)


def coverage_heatmap(
    occupancy: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    bin_labels: Mapping[str, Sequence[str]] | None = None,
    unreachable: Mapping[str, Sequence[int]] | None = None,
    title: str = "",
) -> Path:
    """Trials per bin for each parameter (rows): empty bins are the regions never explored.

    Parameters can have different bin counts (categoricals); missing cells are blank. Empty
    bins are drawn in red with a 0, so unexplored regions stand out; bins listed in
    ``unreachable`` (no feasible architecture at this budget) are hatched grey instead.
    """
    if not occupancy:
        raise ValueError("coverage_heatmap needs at least one parameter")
    names = list(occupancy)
    width = max(len(v) for v in occupancy.values())
    data = np.full((len(names), width), np.nan)
    for i, name in enumerate(names):
        data[i, : len(occupancy[name])] = occupancy[name]
    top = np.nanmax(data) if np.isfinite(data).any() else 1.0
    fig, ax = plt.subplots(figsize=(2.5 + 1.35 * width, 1.6 + 0.6 * len(names)))
    colours = matplotlib.colormaps["Blues"].with_extremes(bad="white")
    shown = np.ma.masked_where(~np.isfinite(data) | (data == 0), data)
    image = ax.imshow(shown, cmap=colours, aspect="auto", vmin=0, vmax=max(top, 1.0))
    fig.colorbar(image, ax=ax, label="trials in bin")
    for i, name in enumerate(names):
        blocked = set((unreachable or {}).get(name, ()))
        labels = (bin_labels or {}).get(name)
        for j, count in enumerate(occupancy[name]):
            if j in blocked and count == 0:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#dddddd", hatch="//",
                                           edgecolor="grey", lw=0))
                colour = "dimgrey"
            elif count == 0:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="#f4a3a3"))
                colour = "darkred"
            else:
                colour = "white" if count > 0.6 * top else "black"
            label = "\n" + labels[j].replace("..", "..\n") if labels else ""
            ax.text(j, i, f"{int(count)}{label}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xticks(range(width), labels=[str(j) for j in range(width)])
    ax.set_xlabel("bin, low to high (categoricals in declared order)")
    ax.set_title((title or "Coverage") + "\nred: never explored; hatched: unreachable at this budget", fontsize=10)
    ax.grid(False)
    return save_figure(fig, path)


def optimization_history(
    points: Sequence[Mapping[str, Any]], path: str | Path, *, tol: float | None = None, title: str = ""
) -> Path:
    """Objective of every finished trial by trial number, by phase, with the running best.

    ``points``: dicts with ``number``, ``value`` (None for failed / pruned trials), ``phase`` and
    ``wasted`` (a reason, or None when useful). Drawn here rather than with Optuna's
    ``plot_optimization_history`` because Optuna's best line runs over every COMPLETE trial,
    including the ones the engine classifies as wasted (degenerate), so it would show a best the
    study never selected. ``tol`` draws the band "within tol of the final best" used by the
    trial-efficiency figure.
    """
    pts = sorted(points, key=lambda p: p["number"])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    scored = [p for p in pts if p.get("value") is not None and np.isfinite(p["value"])]
    for k, phase in enumerate(sorted({str(p.get("phase")) for p in scored})):
        mine = [p for p in scored if str(p.get("phase")) == phase and not p.get("wasted")]
        if mine:
            ax.scatter([p["number"] for p in mine], [p["value"] for p in mine], s=22, color=f"C{k}",
                       label=f"{phase}", zorder=3)
    wasted = [p for p in scored if p.get("wasted")]
    if wasted:
        ax.scatter([p["number"] for p in wasted], [p["value"] for p in wasted], marker="x", s=30, color="black",
                   label="wasted (" + ", ".join(sorted({str(p["wasted"]) for p in wasted})) + ")", zorder=3)
    useful = [p for p in scored if not p.get("wasted")]
    if useful:
        numbers = [p["number"] for p in useful]
        best = np.maximum.accumulate([p["value"] for p in useful])
        last = pts[-1]["number"]
        ax.step([*numbers, last], [*best, best[-1]], where="post", color="firebrick", lw=1.5, label="best so far")
        if tol is not None:
            ax.axhspan(best[-1] - tol, best[-1], color="firebrick", alpha=0.1, label=f"within {tol} of final best")
    unscored = [p for p in pts if p.get("value") is None or not np.isfinite(p["value"])]
    if unscored and scored:
        low = min(p["value"] for p in scored)
        ax.scatter([p["number"] for p in unscored], [low] * len(unscored), marker="|", s=80, color="grey",
                   label="failed / pruned (no value)", zorder=2)
    ax.set(xlabel="trial number", ylabel="validation AUC", title=title or "Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)
