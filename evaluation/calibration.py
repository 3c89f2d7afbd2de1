"""Post-hoc calibration of a trained classifier: Platt (sigmoid), isotonic and temperature scaling.

Every calibrator is fitted by scikit-learn's ``CalibratedClassifierCV(FrozenEstimator(adapter),
method=...)`` on the *validation* logits, where ``LogitAdapter`` is a thin estimator whose
``decision_function`` returns the network's logit (the network itself is already trained and
frozen). The fitted map is then exported as a few numbers (:class:`Calibrator`), so a served model
applies it with numpy and nothing is ever unpickled; ``tests/test_calibration.py`` checks that the
exported map reproduces ``CalibratedClassifierCV.predict_proba`` exactly.

Choosing the calibrator (:func:`choose_calibrator`): each eligible method is scored by its
cross-validated log loss on the validation split, with *blocked* folds (contiguous blocks, no
shuffling: neighbouring windows share days, so shuffled folds would leak), against the raw
log loss of ``"none"``. The lowest wins; on a tie the simpler map wins (none < temperature <
sigmoid < isotonic, by number of fitted parameters).

Isotonic rule: isotonic regression is a step function with as many free values as it likes and
overfits small calibration sets (scikit-learn's user guide warns against it well below ~1000
samples). It is a candidate only with at least ``isotonic_min_samples`` validation windows
(default 1000) and at least ``isotonic_min_per_class`` of the rarer class (default 100);
otherwise it is skipped and the reason recorded.

Ranking: sigmoid (with a positive slope) and temperature are strictly increasing maps of the
logit, so AUC is unchanged; isotonic is non-decreasing, so AUC changes only through the ties it
creates. A Platt fit with a non-positive slope would invert the ranking and is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import log_loss
from sklearn.model_selection import KFold, cross_val_predict

from common.errors import TierHpoError

METHODS = ("temperature", "sigmoid", "isotonic")  # in order of complexity (number of fitted values)
CHOICES = ("none", *METHODS)


@dataclass
class CalibrationConfig:
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    cv_folds: int = 5
    isotonic_min_samples: int = 1000
    isotonic_min_per_class: int = 100

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise TierHpoError(f"calibration.methods: unknown {unknown}; choose from {list(METHODS)}")
        if self.cv_folds < 2:
            raise TierHpoError(f"calibration.cv_folds must be >= 2, got {self.cv_folds}")
        if self.isotonic_min_samples < 2 or self.isotonic_min_per_class < 1:
            raise TierHpoError("calibration.isotonic_min_samples must be >= 2 and isotonic_min_per_class >= 1")


class LogitAdapter(ClassifierMixin, BaseEstimator):
    """A frozen binary classifier whose input ``X (n, 1)`` already *is* its logit.

    It lets scikit-learn's calibrators run on the network's validation logits without
    re-running the network: ``decision_function(X) = X[:, 0]``.
    """

    def fit(self, X: Any, y: Any = None) -> LogitAdapter:
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)[:, 0]

    def predict(self, X: Any) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)


def sklearn_calibrator(method: str) -> CalibratedClassifierCV:
    """The unfitted scikit-learn calibrator of ``method`` over the frozen logit adapter."""
    frozen = FrozenEstimator(LogitAdapter().fit(None))
    return CalibratedClassifierCV(frozen, method=method)


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map ``logit -> probability``, stored as plain numbers (JSON-safe).

    ``params``: none -> {}; sigmoid -> {"a", "b"} with p = expit(-(a*z + b)) (scikit-learn's
    Platt convention); temperature -> {"beta"} with p = expit(2*beta*z) (scikit-learn scales the
    binary logits (-z, z) by the inverse temperature beta); isotonic -> {"x", "y"} thresholds,
    linearly interpolated and clipped at the ends (IsotonicRegression(out_of_bounds="clip")).
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CHOICES:
            raise TierHpoError(f"unknown calibrator {self.method!r}; choose from {list(CHOICES)}")

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(n,)`` float64 for logits ``(n,)``."""
        z = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.method == "none":
            return expit(z)
        if self.method == "sigmoid":
            return expit(-(self.params["a"] * z + self.params["b"]))
        if self.method == "temperature":
            return expit(2.0 * self.params["beta"] * z)
        return np.interp(z, np.asarray(self.params["x"]), np.asarray(self.params["y"]))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibrator:
        return cls(method=raw["method"], params=dict(raw.get("params", {})))


def fit_calibrator(logits: np.ndarray, y: np.ndarray, method: str) -> Calibrator:
    """Fit ``method`` on (validation) logits ``(n,)`` and labels ``(n,)`` and export the map."""
    if method == "none":
        return Calibrator("none")
    if method not in METHODS:
        raise TierHpoError(f"unknown calibration method {method!r}; choose from {list(METHODS)}")
    z, y = _check(logits, y)
    fitted = sklearn_calibrator(method).fit(z[:, None], y)
    (inner,) = fitted.calibrated_classifiers_[0].calibrators
    if method == "sigmoid":
        params = {"a": float(inner.a_), "b": float(inner.b_)}
    elif method == "temperature":
        params = {"beta": float(inner.beta_)}
    else:
        params = {"x": inner.X_thresholds_.tolist(), "y": inner.y_thresholds_.tolist()}
    return Calibrator(method, params)


def cv_log_loss(logits: np.ndarray, y: np.ndarray, method: str, folds: int) -> float:
    """Log loss of ``method`` fitted on ``folds - 1`` contiguous blocks and scored on the held-out block."""
    z, y = _check(logits, y)
    p = cross_val_predict(sklearn_calibrator(method), z[:, None], y, cv=KFold(folds), method="predict_proba")
    return float(log_loss(y, p[:, 1], labels=[0, 1]))


@dataclass(frozen=True)
class CalibrationChoice:
    calibrator: Calibrator
    val_log_loss: dict[str, float]  # "none": raw val log loss; method: blocked-CV val log loss
    skipped: dict[str, str]  # method -> why it was not a candidate
    reason: str
    n_val: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrator": self.calibrator.to_dict(),
            "val_log_loss": self.val_log_loss,
            "skipped": self.skipped,
            "reason": self.reason,
            "n_val": self.n_val,
        }


def choose_calibrator(logits: np.ndarray, y: np.ndarray, cfg: CalibrationConfig | None = None) -> CalibrationChoice:
    """Pick none/temperature/sigmoid/isotonic by blocked-CV log loss on the validation split, then refit it on all of it."""
    cfg = cfg or CalibrationConfig()
    z, y = _check(logits, y)
    n, minority = len(y), int(min(y.sum(), len(y) - y.sum()))
    scores = {"none": float(log_loss(y, expit(z), labels=[0, 1]))}
    skipped: dict[str, str] = {}
    folds = _usable_folds(y, cfg.cv_folds)
    for method in (m for m in METHODS if m in cfg.methods):
        if folds < 2:
            skipped[method] = f"too few samples of a class ({minority}) for 2 blocked folds with both classes"
            continue
        if method == "isotonic" and (n < cfg.isotonic_min_samples or minority < cfg.isotonic_min_per_class):
            skipped[method] = (
                f"isotonic needs >= {cfg.isotonic_min_samples} val windows and >= "
                f"{cfg.isotonic_min_per_class} of the rarer class; have {n} and {minority}"
            )
            continue
        scores[method] = cv_log_loss(z, y, method, folds)
    # Lowest CV log loss; on a tie the simpler map (CHOICES is ordered by complexity).
    ranked = sorted(scores, key=lambda m: (round(scores[m], 12), CHOICES.index(m)))
    for best in ranked:
        calibrator = fit_calibrator(z, y, best)
        if calibrator.method == "sigmoid" and calibrator.params["a"] >= 0:
            skipped["sigmoid"] = "Platt slope is not positive on val: it would invert the model's ranking"
            del scores["sigmoid"]
            continue
        break
    others = ", ".join(f"{m} {scores[m]:.4f}" for m in ranked if m != best and m in scores)
    reason = (
        f"{best}: lowest log loss on val ({scores[best]:.4f}; others: {others or 'none'}); "
        f"methods scored by {folds}-fold blocked CV on {n} val windows, 'none' by its raw val log loss"
    )
    if skipped:
        reason += "; skipped: " + "; ".join(f"{m}: {why}" for m, why in skipped.items())
    return CalibrationChoice(calibrator, scores, skipped, reason, n)


def _usable_folds(y: np.ndarray, wanted: int) -> int:
    """The most blocked folds (<= wanted) whose every training part holds both classes."""
    for k in range(min(wanted, len(y)), 1, -1):
        if all(len(np.unique(y[train])) == 2 for train, _ in KFold(k).split(y)):
            return k
    return 0


def _check(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    labels = np.asarray(y).reshape(-1).astype(np.int64)
    if len(z) != len(labels):
        raise TierHpoError(f"calibration: {len(z)} logits but {len(labels)} labels")
    if not np.all(np.isfinite(z)):
        raise TierHpoError("calibration: logits contain NaN or Inf; the model is broken, refusing to calibrate")
    if set(np.unique(labels)) != {0, 1}:
        raise TierHpoError("calibration: the validation labels need both classes (0 and 1)")
    return z, labels
