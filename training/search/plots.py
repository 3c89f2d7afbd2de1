"""Optuna's study plots for the parent run: a PNG of each (``optuna.visualization.matplotlib``)
and one interactive page with the same figures (``optuna.visualization``, Plotly).

Both backends draw from the same Optuna figure data, so they agree. Numeric categoricals
(``batch_size`` [64, 128, 256], ``patch_len``, ``n_heads``, ``d_ff_ratio``) are ordered by value
there: Optuna's parallel coordinates sort a categorical whose choices are all numbers numerically
(``optuna.visualization._utils._is_numerical``); our space also refuses numeric choices that are
not listed low to high (``training.search.space``), so every view that keeps the declared order
(optuna-dashboard's parallel coordinates and slices, our coverage heatmaps) is numeric too.

The PNG tidy-up (size by axis count, fewer ticks, compact log-scale labels) is ours: Optuna's
parallel-coordinates PNG has a fixed size, matplotlib's default locators and minor log labels,
and its labels overlapped with eight parameters.
"""

from __future__ import annotations

import html
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
HTML_NAME = "optuna_plots.html"
# What Optuna raises for a plot that cannot be drawn yet (e.g. importances need two complete trials
# with different values): the plot is skipped with a warning, never fails the study.
NOT_YET = (ValueError, RuntimeError, ZeroDivisionError, IndexError)


def _target_name(study: optuna.Study) -> str:
    names = study.metric_names
    return names[0] if names else "Objective Value"


def _draw(study: optuna.Study, backend: Any) -> dict[str, Callable[[], Any]]:
    target = _target_name(study)
    return {
        "optimization_history": lambda: backend.plot_optimization_history(study, target_name=target),
        "param_importances": lambda: backend.plot_param_importances(study, target_name=target),
        "parallel_coordinate": lambda: backend.plot_parallel_coordinate(study, target_name=target),
    }


def _log_label(value: float, _pos: Any = None) -> str:
    """1e-4, 3e-3, 0.5 ... 100: short labels for a log axis (matplotlib's are 10^-4 mathtext plus
    unlabelled or crowded minor ticks)."""
    if value <= 0 or not math.isfinite(value):
        return ""
    if 0.1 <= value < 1e3:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def integer_params(study: optuna.Study) -> set[str]:
    """Names of the study's int parameters (their axes get whole-number ticks)."""
    from optuna.distributions import IntDistribution

    return {name for t in study.get_trials(deepcopy=False) for name, d in t.distributions.items()
            if isinstance(d, IntDistribution)}


def tidy_parallel_coordinate(ax: Any, integer: set[str] | frozenset[str] = frozenset()) -> Any:
    """Readable tick labels on Optuna's matplotlib parallel coordinates: a width that grows with the
    number of axes, a handful of labels on each numeric axis (log axes at 1-2-5 steps or decades,
    compactly), small labels on a white backing so the lines do not run through them, and axis
    names rotated clear of each other. Categorical axes keep Optuna's ticks (one per choice); the
    axes named in ``integer`` get whole numbers only."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

    fig = ax.figure
    n_axes = len(ax.get_xticks())
    fig.set_size_inches(max(10.0, 1.3 * n_axes + 3.0), 6.5)
    twins = [a for a in fig.axes if a is not ax and ax.get_shared_x_axes().joined(ax, a)]
    # Optuna adds one twin per axis after the first, in the order of the axis names below them.
    names = [label.get_text() for label in ax.get_xticklabels()]
    for axis_ax, name in zip([ax, *twins], names, strict=False):
        yaxis = axis_ax.yaxis
        if axis_ax.get_yscale() == "log":
            low, high = sorted(axis_ax.get_ylim())
            decades = math.log10(high / low) if low > 0 else 0.0
            subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
            yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
            yaxis.set_major_formatter(FuncFormatter(_log_label))
            yaxis.set_minor_locator(NullLocator())
            yaxis.set_minor_formatter(NullFormatter())
        elif axis_ax is ax or not _fixed_ticks(axis_ax):
            yaxis.set_major_locator(MaxNLocator(nbins=5, integer=name in integer))
            yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}"))
        axis_ax.tick_params(axis="y", labelsize=8)
    ax.tick_params(axis="x", labelsize=9, labelrotation=20)
    # Tick labels exist once the new locators have run; style those (ticks made later copy the
    # font, not the backing box).
    fig.canvas.draw()
    for axis_ax in [ax, *twins]:
        for label in axis_ax.get_yticklabels():
            label.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0})
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return ax


def _fixed_ticks(ax: Any) -> bool:
    """Optuna set explicit ticks (categorical choices, or a missing-value slot) on this axis."""
    from matplotlib.ticker import FixedLocator

    return isinstance(ax.yaxis.get_major_locator(), FixedLocator)


def write_pngs(study: optuna.Study, folder: Path) -> dict[str, Path]:
    """One PNG per plot of ``PLOTS`` that can be drawn now."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in _draw(study, ovm).items():
            try:
                ax = draw()
                ax = ax.flat[0] if hasattr(ax, "flat") else ax
                fig = ax.figure
                if name == "parallel_coordinate":
                    tidy_parallel_coordinate(ax, integer_params(study))
                else:
                    fig.set_size_inches(10, 6)
                path = folder / f"{name}.png"
                fig.savefig(path, dpi=100, bbox_inches="tight")
                plt.close(fig)
                out[name] = path
            except NOT_YET as exc:
                log.warning("skipping the %s plot: %s", name, exc)
    return out


def figures(study: optuna.Study) -> dict[str, Any]:
    """The Plotly figures of ``PLOTS`` that can be drawn now (``plotly.graph_objects.Figure``)."""
    from optuna import visualization as ov

    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in _draw(study, ov).items():
            try:
                out[name] = draw()
            except NOT_YET as exc:
                log.warning("skipping the interactive %s plot: %s", name, exc)
    return out


def write_html(study: optuna.Study, folder: Path) -> Path | None:
    """All interactive figures on one self-contained page, ``folder/optuna_plots.html``.

    plotly.js (~4.8 MB) is embedded once in the page rather than written beside it
    (``include_plotlyjs="directory"``): MLflow's artifact view renders an HTML artifact from a
    blob: URL in a sandboxed iframe, where a relative ``<script src="plotly.min.js">`` resolves to
    nothing, so only an embedded copy works both there and opened from disk (no CDN: nothing is
    downloaded at view time). One page for the three figures keeps that copy to one per study
    (~5 MB) instead of three (~15 MB). Returns None when no figure can be drawn yet.
    """
    try:
        figs = figures(study)
    except ImportError as exc:  # plotly is a declared dependency; an old environment still finishes
        log.warning("skipping the interactive plots: %s", exc)
        return None
    if not figs:
        return None
    import plotly.io as pio

    parts = [f"<h2>{name.replace('_', ' ')}</h2>\n"
             + pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), div_id=name,
                           default_height="560px")
             for i, (name, fig) in enumerate(figs.items())]
    page = ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(study.study_name)}: Optuna plots</title>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
    path = folder / HTML_NAME
    path.write_text(page, encoding="utf-8")
    return path


def write_all(study: optuna.Study, folder: Path) -> list[Path]:
    """The PNGs and the interactive page, for the parent run's ``plots/`` artifacts."""
    paths = list(write_pngs(study, folder).values())
    page = write_html(study, folder)
    return paths + ([page] if page is not None else [])
