"""``tierhpo baselines --tier a50 --horizon 1``: the numbers a transformer has to beat.

Three models, fitted on the training split with the features of each window's *last day*:
``vol``, a logistic regression on one feature, 5-day Parkinson range volatility (``parkinson_5``,
present in every tier: volatility alone predicts a 1 % move well, so a transformer that does not
beat it has learnt nothing beyond the volatility level); ``logreg``, a logistic regression on all
of the tier's inputs (standardised); and ``hgb``, histogram gradient boosting on them (the same windows, labels and
splits as the transformer), scored with the same metrics on val and test. Writes, atomically,
into ``paths.baselines_dir(tier, horizon)``:

* ``metrics.json``: ``{"vol": {...}, "logreg": {"val/auc": ..., "test/auc": ..., ...}, "hgb": {...}}``, every
  name of ``evaluation.metrics.METRIC_NAMES`` for ``val`` and ``test``;
* ``predictions.parquet``: ``date, split, y, vol, logreg, hgb`` for every window of every split.

Hyperparameters are fixed in ``params.yaml`` (``baselines``), not tuned on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from common import atomic, config, paths
from common.errors import TierHpoError
from evaluation.metrics import MetricsParams, classification_metrics
from training import baseline_record
from training.dataset import SPLITS, TierData

MODELS = baseline_record.NAMES
VOL_FEATURE = baseline_record.VOL_FEATURE
SCORED_SPLITS = ("val", "test")


@dataclass(frozen=True)
class BaselinesConfig:
    """``params.yaml`` section ``baselines``."""

    logreg_c: float = 1.0
    logreg_max_iter: int = 2000
    hgb_max_iter: int = 200
    hgb_learning_rate: float = 0.05
    hgb_max_leaf_nodes: int = 15
    hgb_l2_regularization: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"logreg_c": self.logreg_c, "logreg_max_iter": self.logreg_max_iter,
                    "hgb_max_iter": self.hgb_max_iter, "hgb_learning_rate": self.hgb_learning_rate}
        for name, value in positive.items():
            if value <= 0:
                raise TierHpoError(f"baselines.{name} must be > 0, got {value}")
        if self.hgb_max_leaf_nodes < 2:
            raise TierHpoError(f"baselines.hgb_max_leaf_nodes must be >= 2, got {self.hgb_max_leaf_nodes}")
        if self.hgb_l2_regularization < 0:
            raise TierHpoError(f"baselines.hgb_l2_regularization must be >= 0, got {self.hgb_l2_regularization}")


def make_models(cfg: BaselinesConfig) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "vol": make_pipeline(StandardScaler(), LogisticRegression(C=cfg.logreg_c, max_iter=cfg.logreg_max_iter)),
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(C=cfg.logreg_c, max_iter=cfg.logreg_max_iter)),
        # No early stopping: it would carve its own validation set out of the training split.
        "hgb": HistGradientBoostingClassifier(
            max_iter=cfg.hgb_max_iter, learning_rate=cfg.hgb_learning_rate, max_leaf_nodes=cfg.hgb_max_leaf_nodes,
            l2_regularization=cfg.hgb_l2_regularization, early_stopping=False, random_state=cfg.seed,
        ),
    }


def fit_baselines(
    data: TierData, cfg: BaselinesConfig, ece_bins: int
) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Pure: fit both models on the training split; return (metrics per model, predictions frame)."""
    x_train, y_train = data.last_day("train")  # (n_train, F), (n_train,)
    if len(np.unique(y_train)) < 2:
        raise TierHpoError(f"{data.tier} h{data.horizon}: the training split has one class only; no baseline to fit")
    frames = {split: pd.DataFrame({"date": pd.to_datetime(data.dates[data.split_ends[split]]), "split": split,
                                   "y": data.labels_of(split).astype(np.int64)}) for split in SPLITS}
    if VOL_FEATURE not in data.feature_names:
        raise TierHpoError(f"{data.tier}: the volatility baseline needs feature {VOL_FEATURE}, which the tier lacks")
    columns = {"vol": [data.feature_names.index(VOL_FEATURE)]}
    metrics: dict[str, dict[str, float]] = {}
    for name, model in make_models(cfg).items():
        cols = columns.get(name, slice(None))
        model.fit(x_train[:, cols], y_train.astype(np.int64))
        metrics[name] = {}
        for split in SPLITS:
            x, y = data.last_day(split)
            x = x[:, cols]
            p = model.predict_proba(x)[:, 1]
            frames[split][name] = p
            if split in SCORED_SPLITS:
                metrics[name].update(classification_metrics(y, p, split, data.base_rate, ece_bins))
    return metrics, pd.concat([frames[s] for s in SPLITS], ignore_index=True)


def write_outputs(directory: Path, metrics: dict[str, dict[str, float]], predictions: pd.DataFrame) -> None:
    """Both files appear together or not at all (the folder is swapped in one rename)."""
    with atomic.atomic_path(directory) as tmp:
        tmp.mkdir()
        atomic.write_json(tmp / "metrics.json", metrics)
        predictions.to_parquet(tmp / "predictions.parquet", index=False)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    tier: Annotated[str, typer.Option(help="Feature tier: a20, a50 or a100.")],
    horizon: Annotated[int, typer.Option(help="Label horizon in days (one of data.horizons).")],
) -> None:
    """Logistic regression and gradient boosting on a tier and horizon."""
    from training.dataset import check_horizon, check_tier, load_data_config, load_tier

    data_cfg = load_data_config()
    check_tier(tier, data_cfg.tiers)
    check_horizon(horizon, data_cfg.horizons)
    if horizon not in data_cfg.horizons:
        raise TierHpoError(
            f"horizon {horizon} is not in data.horizons {data_cfg.horizons}; use one of those, or add it "
            f"there and rebuild the tiers (`tierhpo tiers --tier {tier}`)"
        )
    cfg = config.load(BaselinesConfig, "baselines")
    rules = config.load(MetricsParams, "metrics")
    data = load_tier(data_cfg.symbol, tier, horizon, data_cfg.context_len, require_validated=True)
    metrics, predictions = fit_baselines(data, cfg, rules.ece_bins)
    out = paths.baselines_dir(tier, horizon)
    write_outputs(out, metrics, predictions)
    summary = "; ".join(
        f"{name} val/auc {metrics[name]['val/auc']:.4f} test/auc {metrics[name]['test/auc']:.4f}" for name in MODELS
    )
    typer.echo(f"baselines: {tier} h{horizon}: {summary} -> {_shown(out)}")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(paths.project_root()))
    except ValueError:
        return str(path)
