"""A PatchTST-style binary classifier: windows of tier features -> patches -> transformer -> one logit.

Two design choices (see issue 3 and BENCHMARKS.md for the measurements):

* **Channel-mixing patches by default.** A token is one patch of *all* features
  (``patch_len * n_features`` numbers). Channel-independent patching (PatchTST's default:
  one token per feature and patch, weights shared across features) multiplies the token count
  by ``n_features`` (~50x the compute at a50) and stays available as an option.
* **Global standardisation by default.** ``TierData`` already standardises with the training
  split's statistics, so the model sees the volatility *level*, the main signal for this
  target. Per-window instance normalisation (RevIN) erases that level; it is an option.
* **Newest-token pooling by default.** The head reads the encoder output of the most recent
  patch (which attends to all others); mean pooling dilutes the latest volatility and scored
  clearly worse in our measurements. Mean pooling is an option.

The encoder is ``torch.nn.TransformerEncoder`` (pre-norm, GELU, batch-first), so attention
runs through fused scaled-dot-product attention and inference takes PyTorch's fast path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from common.errors import TierHpoError

NORMS = ("global", "revin")
POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter of one network; ``training.budget.solve`` fills in ``d_model``/``d_ff``."""

    n_features: int
    context_len: int
    patch_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    stride: int = 0  # 0 = patch_len (non-overlapping patches)
    dropout: float = 0.1  # embedding, residual and feed-forward dropout
    attn_dropout: float = 0.0  # on attention weights; 0 (PatchTST's default) keeps the fused SDPA kernel
    channel_independent: bool = False
    norm: Literal["global", "revin"] = "global"
    pooling: Literal["last", "mean"] = "last"  # encoder output summarised by the newest token, or the mean

    def __post_init__(self) -> None:
        for name in ("n_features", "context_len", "patch_len", "d_model", "n_layers", "n_heads", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TierHpoError(f"model.{name} must be a positive integer, got {value!r}")
        if self.stride < 0:
            raise TierHpoError(f"model.stride must be >= 0 (0 = patch_len), got {self.stride}")
        if self.patch_len > self.context_len:
            raise TierHpoError(
                f"model.patch_len {self.patch_len} exceeds context_len {self.context_len}; use a shorter patch"
            )
        if self.d_model % self.n_heads:
            raise TierHpoError(f"model.d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TierHpoError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.norm not in NORMS:
            raise TierHpoError(f"model.norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.pooling not in POOLINGS:
            raise TierHpoError(f"model.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")

    @property
    def step(self) -> int:
        return self.stride or self.patch_len

    @property
    def n_patches(self) -> int:
        return (self.context_len - self.patch_len) // self.step + 1

    @property
    def n_tokens(self) -> int:
        """Tokens per window seen by the encoder (x n_features when channel-independent)."""
        return self.n_patches * (self.n_features if self.channel_independent else 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Rebuild from ``to_dict()`` output (e.g. ``best.json["model_config"]``), type-checked."""
        from common.config import build

        return build(cls, raw, where="model_config")


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., 2022), input side only: a classifier has no
    output to de-normalise. Hand-written because torch has no such module and the 8 lines are
    the whole method; ``transformers`` (which has ``PatchTSTStdScaler``) is not a dependency."""

    def __init__(self, n_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, L, F)
        mean = x.mean(dim=1, keepdim=True)  # (B, 1, F)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
        return (x - mean) / std * self.weight + self.bias


class PatchTSTClassifier(nn.Module):
    """Input ``(B, context_len, n_features)`` standardised windows -> logits ``(B,)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Oldest days that do not fill a whole patch are dropped, so the newest day is always seen.
        self.skip = (cfg.context_len - cfg.patch_len) % cfg.step
        token_dim = cfg.patch_len if cfg.channel_independent else cfg.patch_len * cfg.n_features
        self.revin = RevIN(cfg.n_features) if cfg.norm == "revin" else None
        self.embed = nn.Linear(token_dim, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.n_patches, cfg.d_model) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        layer.self_attn.dropout = cfg.attn_dropout  # MultiheadAttention reads it at every call
        self.encoder = nn.TransformerEncoder(
            layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False
        )
        head_in = cfg.d_model * (cfg.n_features if cfg.channel_independent else 1)
        self.head = nn.Linear(head_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        batch = x.shape[0]
        if self.revin is not None:
            x = self.revin(x)
        x = x[:, self.skip:]  # (B, L', F)
        if cfg.channel_independent:
            patches = x.unfold(1, cfg.patch_len, cfg.step)  # (B, N, F, P)
            tokens = patches.transpose(1, 2).reshape(batch * cfg.n_features, cfg.n_patches, cfg.patch_len)
        elif cfg.step == cfg.patch_len:  # non-overlapping: a token is P consecutive days, a free view
            tokens = x.reshape(batch, cfg.n_patches, cfg.patch_len * cfg.n_features)
        else:  # overlapping: (B, N, F, P) -> (B, N, P, F) days-major like the view above
            patches = x.unfold(1, cfg.patch_len, cfg.step)
            tokens = patches.transpose(2, 3).reshape(batch, cfg.n_patches, cfg.patch_len * cfg.n_features)
        h = self.drop(self.embed(tokens) + self.pos)  # (B', N, d)
        h = self.encoder(h)  # (B', N, d)
        h = h[:, -1] if cfg.pooling == "last" else h.mean(dim=1)  # (B', d)
        if cfg.channel_independent:
            h = h.reshape(batch, cfg.n_features * cfg.d_model)
        return self.head(h).squeeze(-1)  # (B,)


def count_parameters(model: nn.Module) -> int:
    """The real parameter count, ``sum(p.numel())``; works on the meta device."""
    return sum(p.numel() for p in model.parameters())


def build_on_meta(cfg: ModelConfig) -> PatchTSTClassifier:
    """The network without memory or init cost, for counting parameters of any size."""
    with torch.device("meta"):
        return PatchTSTClassifier(cfg)
