"""The parent run's Optuna plots (training/search/plots.py): numeric categoricals in numeric order
in the Plotly and matplotlib figures, tick labels that do not overlap, and one self-contained
interactive page. Real Optuna studies in memory with the project's search space; no training
(the engine test in test_hpo_engine.py checks the same files land on a real parent run)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from hpo_tiny import SPACE

from common import config
from training.search import analysis, plots
from training.search.config import HpoConfig
from training.search.space import SearchSpace

pytest.importorskip("plotly", reason="plotly is a declared dependency (make env installs it)")

REPO = Path(__file__).resolve().parents[1]


def project_space() -> SearchSpace:
    """The default params.yaml search space: 8 parameters, log-scale lr and weight_decay, and the
    numeric categoricals batch_size [64, 128, 256], patch_len, n_heads, d_ff_ratio."""
    return SearchSpace.from_config(config.load(HpoConfig, "hpo", REPO / "params.yaml").space)


def study_over(space: SearchSpace, n: int = 12, seed: int = 0) -> optuna.Study:
    """A finished-looking study: ``n`` COMPLETE trials at random points of ``space``, named like ours."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name="a20-5K-h1", direction="maximize")
    study.set_metric_names(["val/auc"])
    dists = space.distributions()
    for _ in range(n):
        params = {p.name: p.from_unit(rng.random()) for p in space.params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(rng.uniform(0.5, 0.6))))
    return study


def axis_ticks(fig, name: str) -> tuple[int, list[tuple[float, str]]]:
    """Optuna's Plotly parallel coordinates draw each axis's ticks as annotations at x = the axis's
    index: that index and its (height, text) pairs, bottom to top."""
    index = list(fig.layout.xaxis.ticktext).index(name)
    return index, sorted((a.y, a.text) for a in fig.layout.annotations if a.x == index)


def test_plotly_parallel_coordinate_orders_numeric_categoricals_by_value():
    study = study_over(project_space())
    fig = plots.figures(study)["parallel_coordinate"]
    assert list(fig.layout.xaxis.ticktext)[0] == "val/auc"  # the objective is named, not "Objective Value"
    lines = [t for t in fig.data if t.customdata is not None]
    assert len(lines) == len(study.trials)
    for name, choices in (("batch_size", [64, 128, 256]), ("patch_len", [4, 8, 16]), ("n_heads", [1, 2, 4]),
                          ("d_ff_ratio", [1, 2, 4])):
        index, ticks = axis_ticks(fig, name)
        assert [text for _, text in ticks] == [str(c) for c in choices], name  # not "128, 256, 64"
        height = {text: y for y, text in ticks}
        for line in lines:  # each trial's line crosses the axis at its own choice's tick
            assert line.y[index] == pytest.approx(height[line.customdata[index][1]]), name
        values = sorted({str(t.params[name]) for t in study.trials}, key=float)
        assert sorted({line.customdata[index][1] for line in lines}, key=float) == values


def _twin_axes(ax):
    return [a for a in ax.figure.axes if a is not ax and ax.get_shared_x_axes().joined(ax, a)]


def test_png_parallel_coordinate_has_numeric_order_and_no_overlapping_labels(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    study = study_over(project_space())
    ax = plots.tidy_parallel_coordinate(ovm.plot_parallel_coordinate(study, target_name="val/auc"),
                                        plots.integer_params(study))
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    names = [t.get_text() for t in ax.get_xticklabels()]
    twins = dict(zip(names[1:], _twin_axes(ax), strict=True))
    assert [t.get_text() for t in twins["batch_size"].get_yticklabels()] == ["64", "128", "256"]
    assert [t.get_text() for t in twins["d_ff_ratio"].get_yticklabels()] == ["1", "2", "4"]
    layers = [t.get_text() for t in twins["n_layers"].get_yticklabels() if t.get_text()]
    assert layers and all(x.isdigit() for x in layers), layers  # an int parameter: whole numbers

    boxes = []
    for axis_ax in [ax, *twins.values()]:
        labels = [t for t in axis_ax.get_yticklabels() if t.get_visible() and t.get_text()]
        lo, hi = sorted(axis_ax.get_ylim())
        labels = [t for t in labels if lo - 1e-12 <= t.get_position()[1] <= hi + 1e-12 or axis_ax.get_yscale() == "log"]
        assert 1 <= len(labels) <= 8, [t.get_text() for t in labels]
        assert all(len(t.get_text()) <= 6 for t in labels), [t.get_text() for t in labels]  # "1e-4", "0.3", "256"
        boxes += [t.get_window_extent(renderer) for t in labels]
    boxes += [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    overlapping = [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
    assert not overlapping
    fig.savefig(tmp_path / "pc.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def test_write_all_gives_three_pngs_and_one_self_contained_page(tmp_path):
    study = study_over(SPACE, n=6)
    files = plots.write_all(study, tmp_path)
    assert sorted(p.name for p in files) == sorted([f"{n}.png" for n in plots.PLOTS] + [plots.HTML_NAME])
    page = (tmp_path / plots.HTML_NAME).read_text(encoding="utf-8")
    assert page.count('class="plotly-graph-div"') == 3
    # plotly.js is in the page, once; nothing is fetched when it is opened (no CDN, no sibling file)
    assert len(re.findall(r"plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert 3_000_000 < len(page.encode()) < 7_000_000


def test_coverage_heatmap_labels_follow_the_numeric_declaration():
    """Our coverage heatmaps label categorical bins in declared order, which the space keeps low to high."""
    space = project_space()
    assert analysis.bin_labels(space["batch_size"], 4) == ["64", "128", "256"]
    assert analysis.bin_labels(space["patch_len"], 4) == ["4", "8", "16"]
