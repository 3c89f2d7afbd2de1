"""Every classification metric of the project, in one namespace: ``"{split}/{name}"``.

The same dict goes to MLflow, ``metrics.json`` files and Optuna user attributes. scikit-learn
computes everything it provides; the expected calibration error comes from torchmetrics
(``binary_calibration_error``), a maintained implementation, since scikit-learn has none.

ECE variant: the L1 ECE of the *positive-class* probability (reliability-diagram ECE, not the
top-label "confidence" ECE), over ``ece_bins`` equal-width bins ``[i/n, (i+1)/n)`` (torchmetrics
puts ``p == 1.0`` in a bin of its own), each bin weighted by its share of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from common.errors import TierHpoError

DEFAULT_ECE_BINS = 15

# "{split}/{name}" for every name here; "_at_base" = thresholded at the training base rate.
METRIC_NAMES: tuple[str, ...] = (
    "auc",
    "accuracy", "precision", "recall", "f1",
    "accuracy_at_base", "precision_at_base", "recall_at_base", "f1_at_base",
    "brier",
    "log_loss", "log_loss_base", "log_loss_skill",
    "log_loss_base_split", "log_loss_skill_split",  # against the split's own (hindsight) positive rate
    "ece",
    "pred_mean", "pred_std", "pred_range_90", "pred_range",
    "pos_rate",  # share of predictions >= 0.5 (a collapsed model predicts one class)
    "pos_rate_at_base",  # share of predictions >= the training base rate
    "label_rate",  # share of positive labels in the split
)
# What the trainer computes after every epoch (pruning, learning curves); all of METRIC_NAMES
# are computed once for the best epoch. About 5x cheaper than the full set.
EPOCH_METRIC_NAMES: tuple[str, ...] = ("auc", "log_loss", "brier", "pred_std")


@dataclass(frozen=True)
class MetricsParams:
    """``params.yaml`` section ``metrics``: ECE bins and the degenerate-model thresholds."""

    ece_bins: int = DEFAULT_ECE_BINS
    pred_std_min: float = 0.01  # below this the predictions have collapsed
    skill_min: float = 0.0  # log-loss skill at or below this = no better than the base rate

    def __post_init__(self) -> None:
        if self.ece_bins < 1:
            raise TierHpoError(f"metrics.ece_bins must be >= 1, got {self.ece_bins}")
        if self.pred_std_min < 0:
            raise TierHpoError(f"metrics.pred_std_min must be >= 0, got {self.pred_std_min}")


def classification_metrics(
    y_true: np.ndarray,
    p: np.ndarray,
    split: str,
    base_rate: float,
    ece_bins: int = DEFAULT_ECE_BINS,
    names: tuple[str, ...] = METRIC_NAMES,
) -> dict[str, float]:
    """:data:`METRIC_NAMES` (or the subset ``names``) for labels ``y_true`` (0/1) and
    probabilities ``p``, keyed ``"{split}/{name}"``. ``base_rate`` is the *training* positive
    rate: the no-skill forecast for ``log_loss_base`` and the second decision threshold. AUC is
    NaN when ``y_true`` has one class only.

    Base rates drift (0.25 train, 0.16 val, 0.12 test on the default data), so skill is given
    twice: ``log_loss_skill`` against the training rate (the constant forecast one could have
    made; degeneracy is judged on it) and ``log_loss_skill_split`` against the split's own rate
    (a hindsight constant: a model that only tracks the prevalence shift scores 0 or below)."""
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown:
        raise TierHpoError(f"unknown metric name(s) {unknown}; known: {list(METRIC_NAMES)}")
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(p) or len(y) == 0:
        raise TierHpoError(f"{split}: need as many predictions as labels (>0), got {len(p)} and {len(y)}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise TierHpoError(f"{split}: predictions must be finite probabilities in [0, 1]")
    if not 0 < base_rate < 1:
        raise TierHpoError(f"{split}: the training base rate must be in (0, 1), got {base_rate}")
    want = set(names)
    out: dict[str, float] = {}
    if "auc" in want:
        out["auc"] = _auc(y, p)
    for suffix, threshold in (("", 0.5), ("_at_base", base_rate)):
        if not want & {f"{m}{suffix}" for m in ("accuracy", "precision", "recall", "f1", "pos_rate")}:
            continue
        y_hat = (p >= threshold).astype(np.int64)
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, y_hat, average="binary", zero_division=0.0
        )
        out[f"accuracy{suffix}"] = accuracy_score(y, y_hat)
        out[f"precision{suffix}"] = precision
        out[f"recall{suffix}"] = recall
        out[f"f1{suffix}"] = f1
        out[f"pos_rate{suffix}"] = y_hat.mean()
    if "brier" in want:
        out["brier"] = brier_score_loss(y, p, pos_label=1)
    if want & {"log_loss", "log_loss_base", "log_loss_skill", "log_loss_base_split", "log_loss_skill_split"}:
        out["log_loss"] = log_loss(y, p, labels=[0, 1])
        out["log_loss_base"] = log_loss(y, np.full_like(p, base_rate), labels=[0, 1])
        out["log_loss_skill"] = 1.0 - out["log_loss"] / out["log_loss_base"]
        split_rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        out["log_loss_base_split"] = log_loss(y, np.full_like(p, split_rate), labels=[0, 1])
        out["log_loss_skill_split"] = 1.0 - out["log_loss"] / out["log_loss_base_split"]
    if "ece" in want:
        out["ece"] = expected_calibration_error(y, p, ece_bins)
    p5, p95 = np.percentile(p, [5, 95])
    out["pred_mean"] = p.mean()
    out["pred_std"] = p.std()
    out["pred_range_90"] = p95 - p5
    out["pred_range"] = p.max() - p.min()
    out["label_rate"] = y.mean()
    return {f"{split}/{name}": float(out[name]) for name in METRIC_NAMES if name in want}


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """L1 ECE of the positive-class probability over ``n_bins`` equal-width bins (torchmetrics)."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    preds = torch.tensor(np.asarray(p, dtype=np.float64))  # a copy: inputs may be read-only views
    target = torch.tensor(np.asarray(y_true).astype(np.int64))
    return float(binary_calibration_error(preds, target, n_bins=n_bins, norm="l1", validate_args=False))


def degeneracy(
    metrics: dict[str, float], split: str = "val", pred_std_min: float = 0.01, skill_min: float = 0.0
) -> str | None:
    """Why a model counts as degenerate on ``split`` (collapsed or no better than the base
    rate), or ``None``. AUC cannot tell: ranks can survive a collapse to near-constant output."""
    std = metrics.get(f"{split}/pred_std", math.nan)
    skill = metrics.get(f"{split}/log_loss_skill", math.nan)
    if not math.isfinite(std) or not math.isfinite(skill):
        return f"{split} metrics missing or not finite (pred_std={std}, log_loss_skill={skill})"
    if std < pred_std_min:
        return f"collapsed predictions: {split}/pred_std {std:.4g} < {pred_std_min:g}"
    if skill <= skill_min:
        return f"no skill over the base rate: {split}/log_loss_skill {skill:.4g} <= {skill_min:g}"
    return None


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if y.min() == y.max():
        return math.nan
    return roc_auc_score(y, p)
