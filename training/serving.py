"""The served model: an MLflow pyfunc that turns raw tier-feature windows into calibrated probabilities.

It carries three things, all as plain data (nothing is unpickled when it loads):

* the feature normalisation: the training split's per-feature ``mean``/``std`` (``TierData``),
* the network: ``ModelConfig`` as JSON plus the weights, loaded with ``torch.load(..., weights_only=True)``:
  one ``state_dict`` (``model.pt``), or a seed ensemble ``{"seed_<s>": state_dict}`` (``refit.pt``) whose
  members' logits are averaged before calibration,
* the calibrator: :class:`evaluation.calibration.Calibrator` as JSON.

It is logged as an MLflow *model from code*: this file is the model's code and ends with
``mlflow.models.set_model(...)``. MLflow 3 refuses to unpickle a cloudpickled ``PythonModel``
by default; from code, loading runs this file and reads the two artifacts, nothing else. The
``common``, ``training``, ``evaluation`` and ``pipelines`` packages travel with the model (``code_paths``),
so it loads with the code it was trained with, in any process that has the dependencies.

Input (signature): a DataFrame of *raw* (unscaled) tier features, one column per feature, one row
per day, oldest first. Without a ``window_id`` column the frame is one window of exactly
``context_len`` rows; with it, rows are grouped by ``window_id`` (in order of first appearance)
and each group is one window of ``context_len`` rows. Output: one row per window with

* ``probability``: the calibrated probability in [0, 1];
* ``max_excess_z``: the window's largest |z| = |x - mean| / std over every day and feature,
  in training-split standard deviations (how far the input strays from what the model saw);
* ``outside_training_range``: ``max_excess_z > spec.z_limit`` (default
  ``common.limits.SERVING_Z_LIMIT`` = 12: the default a50 tier's own training windows reach
  12.2 at most, its val and test windows 6.4 and 11.9, while raw-price inputs from another
  market reached 34). A flagged window still gets its probability: the guard is a flag column,
  never an error, so a batch is not lost to one extreme day; callers decide what to do with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from common import limits

WINDOW_ID = "window_id"
SPEC_ARTIFACT, WEIGHTS_ARTIFACT = "spec", "weights"
SPEC_FORMAT = 1
_BATCH = 1024  # windows per forward pass: bounds memory for large requests


@dataclass
class ServingSpec:
    """Everything except the weights that the served model needs, JSON-serialisable."""

    model_config: dict[str, Any]
    feature_names: list[str]
    mean: list[float]  # (F,) training-split mean of the raw features
    std: list[float]  # (F,) training-split std of the raw features (zeros already replaced by 1)
    context_len: int
    calibrator: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # tier, budget, horizon, ... (informational)
    format: int = SPEC_FORMAT
    z_limit: float = limits.SERVING_Z_LIMIT  # |z| above this flags a window outside_training_range

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"spec: {n} feature names but {len(self.mean)} means and {len(self.std)} stds")
        if self.model_config.get("n_features") != n:
            raise ValueError(f"spec: model expects {self.model_config.get('n_features')} features, got {n} names")
        if self.model_config.get("context_len") != self.context_len:
            raise ValueError("spec: context_len differs from the model config's")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServingSpec:
        raw = json.loads(text)
        if raw.get("format") != SPEC_FORMAT:
            raise ValueError(f"unsupported serving spec format {raw.get('format')!r} (expected {SPEC_FORMAT})")
        return cls(**raw)


def signature(feature_names: list[str] | tuple[str, ...]) -> ModelSignature:
    inputs = Schema([ColSpec("double", name) for name in feature_names] + [ColSpec("long", WINDOW_ID, required=False)])
    outputs = Schema([ColSpec("double", "probability"), ColSpec("boolean", "outside_training_range"),
                      ColSpec("double", "max_excess_z")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def windows_from_frame(frame: pd.DataFrame, feature_names: list[str], context_len: int) -> np.ndarray:
    """Raw rows -> windows ``(B, context_len, F)`` float64, validated; see the module doc for the layout."""
    missing = [c for c in feature_names if c not in frame.columns]
    if missing:
        raise _bad_input(f"missing feature columns {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    values = frame[list(feature_names)].to_numpy(dtype=np.float64)  # (rows, F)
    if not np.isfinite(values).all():
        raise _bad_input("feature values must be finite numbers (found NaN or Inf)")
    if WINDOW_ID in frame.columns and frame[WINDOW_ID].notna().any():
        ids = frame[WINDOW_ID].to_numpy()
        order = pd.unique(ids)
        groups = [np.flatnonzero(ids == wid) for wid in order]
    else:
        groups = [np.arange(len(frame))]
    bad = [(order[i] if len(groups) > 1 else "the input", len(g)) for i, g in enumerate(groups) if len(g) != context_len]
    if bad:
        wid, n = bad[0]
        raise _bad_input(f"each window needs exactly context_len={context_len} rows; {wid} has {n}")
    return np.stack([values[g] for g in groups])


class TierHpoPyfunc(mlflow.pyfunc.PythonModel):
    """Raw feature windows -> calibrated probabilities (see the module doc)."""

    def load_context(self, context) -> None:
        self.load(context.artifacts[SPEC_ARTIFACT], context.artifacts[WEIGHTS_ARTIFACT])

    def load(self, spec_path: str | os.PathLike, weights_path: str | os.PathLike) -> TierHpoPyfunc:
        import torch

        from evaluation.calibration import Calibrator
        from training.model import ModelConfig, PatchTSTClassifier

        self.spec = ServingSpec.from_json(Path(spec_path).read_text())
        self.calibrator = Calibrator.from_dict(self.spec.calibrator)
        self.mean = np.asarray(self.spec.mean, dtype=np.float64)
        self.std = np.asarray(self.spec.std, dtype=np.float64)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        # A seed ensemble ({"seed_<s>": state_dict}, refit.pt) or one network's state_dict.
        states = [state[k] for k in sorted(state)] if state and all(k.startswith("seed_") for k in state) else [state]
        self.nets = []
        for member in states:
            net = PatchTSTClassifier(ModelConfig.from_dict(self.spec.model_config))
            net.load_state_dict(member)
            net.eval()
            self.nets.append(net)
        return self

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows ``(B, L, F)`` -> logits ``(B,)`` float64."""
        import torch

        x = ((windows - self.mean) / self.std).astype(np.float32)  # (B, L, F), train-split standardisation
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), _BATCH):
                batch = torch.from_numpy(x[start:start + _BATCH])
                out.append(np.mean([net(batch).double().numpy() for net in self.nets], axis=0))  # mean logit
        return np.concatenate(out) if out else np.empty(0)

    # No type hints on predict: MLflow would try to derive a signature from them; ours is explicit.
    def predict(self, context, model_input, params=None):
        if isinstance(model_input, np.ndarray):  # direct Python use: (L, F) or (B, L, F) raw windows
            windows = model_input[None] if model_input.ndim == 2 else model_input
            if windows.ndim != 3 or windows.shape[1:] != (self.spec.context_len, len(self.spec.feature_names)):
                raise _bad_input(
                    f"expected windows of shape (B, {self.spec.context_len}, {len(self.spec.feature_names)}), "
                    f"got {model_input.shape}"
                )
        else:
            windows = windows_from_frame(pd.DataFrame(model_input), self.spec.feature_names, self.spec.context_len)
        windows = np.asarray(windows, dtype=np.float64)
        probability = self.calibrator.apply(self.logits(windows))
        excess = self.max_excess_z(windows)
        return pd.DataFrame({
            "probability": np.asarray(probability, dtype=np.float64),
            "outside_training_range": excess > float(self.spec.z_limit),
            "max_excess_z": excess,
        })

    def max_excess_z(self, windows: np.ndarray) -> np.ndarray:
        """(B,) largest |z| of each raw window ``(B, L, F)`` under the training-split standardisation."""
        if not len(windows):
            return np.empty(0)
        return np.abs((windows - self.mean) / self.std).max(axis=(1, 2))


def input_example(spec: ServingSpec) -> pd.DataFrame:
    """One window at the training-split mean of every feature (what the UI shows as a request)."""
    return pd.DataFrame(np.tile(np.asarray(spec.mean), (spec.context_len, 1)), columns=list(spec.feature_names))


def write_artifacts(directory: Path, spec: ServingSpec, weights: Path) -> dict[str, str]:
    """Write the spec beside a copy-free reference to the weights; returns pyfunc ``artifacts``."""
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "spec.json"
    spec_path.write_text(spec.to_json())
    return {SPEC_ARTIFACT: str(spec_path), WEIGHTS_ARTIFACT: str(weights)}


def code_paths() -> list[str]:
    """The project packages the served model imports (shipped with it, see the module doc)."""
    root = Path(__file__).resolve().parents[1]
    return [str(root / pkg) for pkg in ("common", "training", "evaluation", "pipelines")]


def pip_requirements() -> list[str]:
    """Pinned to what is installed, so MLflow does not load the model again just to infer them."""
    from importlib.metadata import version

    pins = {"mlflow": "mlflow", "torch": "torch", "numpy": "numpy", "pandas": "pandas",
            "scikit-learn": "scikit-learn", "scipy": "scipy", "pyyaml": "pyyaml", "torchmetrics": "torchmetrics"}
    return [f"{name}=={version(dist).split('+')[0]}" for name, dist in pins.items()]


def model_kwargs(spec: ServingSpec, weights: Path, workdir: Path) -> dict[str, Any]:
    """Keyword arguments for ``mlflow.pyfunc.log_model``/``save_model`` of this model from code."""
    return {
        "python_model": str(Path(__file__).resolve()),
        "artifacts": write_artifacts(workdir, spec, weights),
        "code_paths": code_paths(),
        "signature": signature(spec.feature_names),
        "input_example": input_example(spec),
        "pip_requirements": pip_requirements(),
        "metadata": {"serving_spec_format": SPEC_FORMAT, **{k: str(v) for k, v in spec.info.items()}},
    }


def _bad_input(message: str) -> MlflowException:
    return MlflowException(f"tierhpo model input: {message}", error_code=INVALID_PARAMETER_VALUE)


if __name__ != "training.serving":  # executed as the logged model's code (not imported as a module)
    mlflow.models.set_model(TierHpoPyfunc())
