"""Every shared plot writes a real, non-empty PNG and rejects inputs it cannot draw."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg
from matplotlib import pyplot as plt

from evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_px: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert min(img.shape[:2]) >= min_px
    assert img[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temp leftovers


def test_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)  # miscalibrated on purpose
    out = plots.reliability_diagram(y, {"raw": p, "calibrated": p**2}, tmp_path / "rel.png", title="h1 20M")
    assert_png(out)
    assert plt.get_fignums() == []  # figures are closed


def test_reliability_diagram_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="predictions for"):
        plots.reliability_diagram([0, 1, 0], {"raw": [0.1, 0.2]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_heatmap_with_nan_and_annotations(tmp_path):
    values = np.array([[0.71, 0.69, np.nan], [0.70, 0.72, 0.68], [0.66, 0.70, 0.73]])
    notes = [[f"{v:.3f}\n±0.004" if np.isfinite(v) else "n/a" for v in row] for row in values]
    out = plots.heatmap(values, ["2M", "20M", "200M"], ["2M", "20M", "200M"], tmp_path / "hm.png",
                        annotations=notes, xlabel="trained at", ylabel="hyperparameters of", cbar_label="val AUC")
    assert_png(out)
    with pytest.raises(ValueError, match="do not match"):
        plots.heatmap(values, ["a"], ["b"], tmp_path / "bad.png")


def test_scaling_plot_with_baselines_and_power_law(tmp_path):
    points = [{"budget": b, "n_params": n, "auc": a, "lo": a - 0.03, "hi": a + 0.03}
              for b, n, a in [("2M", 2e6, 0.70), ("20M", 2e7, 0.72), ("200M", 2e8, 0.71), ("2B", 2e9, 0.73)]]
    fit = {"fitted": True, "a": 0.2, "b": 0.03, "b_se": 0.02, "n_min": 2e6}
    out = plots.scaling_plot(points, tmp_path / "scaling.png", baselines={"logreg": {"auc": 0.69, "lo": 0.66,
                             "hi": 0.72}}, power_law=fit, title="a50 h1", verdict="inconclusive (within noise)")
    assert_png(out)


def test_coverage_heatmap_ragged_rows(tmp_path):
    occ = {"lr": [3, 0, 2, 1, 0], "dropout": [1, 1, 1, 1, 2], "batch_size": [4, 0, 2]}
    out = plots.coverage_heatmap(occ, tmp_path / "cov.png", bin_labels={"batch_size": ["32", "64", "128"]},
                                 unreachable={"batch_size": [1]})
    assert_png(out)


def test_optimization_history(tmp_path):
    points = [{"number": i, "value": 0.6 + 0.01 * i, "phase": "forced" if i < 3 else "tpe", "wasted": None}
              for i in range(8)]
    points[4]["wasted"] = "degenerate"
    points[5].update(value=None, wasted="failed")
    assert_png(plots.optimization_history(points, tmp_path / "hist.png", tol=0.005, title="a50 20M h1"))
