"""A trained network's outputs on the windows of a split: validation inside ``training.trainer``
and ``training.batched``, and the stages after HPO (promotion, cross-budget, select).

* :class:`SplitWindows`: one split's windows on a device, gathered as ``(B, L, F)`` batches.
* :func:`check_compatible`: the model's feature count and context length match the tier's.
* :func:`split_logits`: logits of every window of a split, in time order, in eval mode.
* :func:`predict_logits`: the same from a config and a ``state_dict`` (what ``best.json`` and
  ``model.pt`` hold); probabilities are ``scipy.special.expit`` of these logits.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from common.errors import TierHpoError
from training.dataset import TierData
from training.device import autocast_context, resolve_device
from training.model import ModelConfig, PatchTSTClassifier


class SplitWindows:
    """The windows of one split on ``device``, as batches ``(B, L, F)``.

    Materialised once as a contiguous ``(n, L, F)`` tensor when that stays under
    ``MATERIALISE_BYTES`` (a row gather is then one ``index_select`` of whole windows, ~5x
    faster than gathering ``B x L`` day rows, and evaluation batches are free views);
    otherwise each batch is gathered from the ``(N, F)`` day rows.
    """

    MATERIALISE_BYTES = 1 << 30

    def __init__(self, data: TierData, split: str, device: torch.device) -> None:
        self.index = torch.from_numpy(data.window_index(split)).to(device)  # (n, L)
        features = torch.from_numpy(data.features).to(device)  # (N, F)
        size = self.index.numel() * features.shape[1] * features.element_size()
        self.features = features
        self.dense = features[self.index] if size <= self.MATERIALISE_BYTES else None  # (n, L, F)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Windows ``rows`` (B,) -> (B, L, F)."""
        return self.dense.index_select(0, rows) if self.dense is not None else self.features[self.index[rows]]

    def span(self, start: int, stop: int) -> torch.Tensor:
        """Windows ``start:stop`` in time order -> (B, L, F)."""
        return self.dense[start:stop] if self.dense is not None else self.features[self.index[start:stop]]


def check_compatible(model_cfg: ModelConfig, data: TierData) -> None:
    """Refuse a model whose input shape (features x days) is not the tier's."""
    if model_cfg.n_features != data.n_features or model_cfg.context_len != data.context_len:
        raise TierHpoError(
            f"model expects {model_cfg.n_features} features x {model_cfg.context_len} days but the tier has "
            f"{data.n_features} x {data.context_len}; re-solve the model for this tier"
        )


def split_logits(model: nn.Module, windows: SplitWindows, batch_size: int,
                 autocast: contextlib.AbstractContextManager) -> np.ndarray:
    """Logits ``(n,)`` float64 of every window in ``windows``, in time order (the model is put in eval mode)."""
    model.eval()
    out = []
    with torch.inference_mode(), autocast:
        for start in range(0, len(windows), batch_size):
            out.append(model(windows.span(start, start + batch_size)).float())
    return torch.cat(out).double().cpu().numpy()


def load_model(model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor], device: str = "cpu") -> PatchTSTClassifier:
    """The network with ``state_dict`` loaded, in eval mode on ``device``."""
    model = PatchTSTClassifier(model_cfg)
    model.load_state_dict(state_dict)
    return model.to(resolve_device(device)).eval()


def predict_logits(
    model_cfg: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    data: TierData,
    split: str,
    batch_size: int = 4096,
    device: str = "auto",
) -> np.ndarray:
    """Logits ``(n_split,)`` float64 of every window of ``split`` (promotion, cross-budget, select)."""
    check_compatible(model_cfg, data)
    model = load_model(model_cfg, state_dict, device)
    dev = next(model.parameters()).device
    return split_logits(model, SplitWindows(data, split, dev), batch_size, autocast_context(dev))
