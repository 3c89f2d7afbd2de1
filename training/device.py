"""Where a training or inference run executes, and at what precision: shared by ``training.trainer``,
``training.batched`` and ``training.inference``.

CUDA runs in bf16 autocast; the CPU and Apple's MPS run in fp32. On the CPU, training steps use
the plain matmul attention backend (see :func:`training_attention`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from common.errors import TierHpoError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else MPS (Apple silicon), else the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TierHpoError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "mps" and not _mps_available():
        raise TierHpoError("train.device is 'mps' but no MPS device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op context (fp32) on the CPU and on MPS."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_attention(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the attention-backend context for training steps. On the CPU, the plain
    matmul SDPA backend: with the few tokens of a window (<= 16) and small heads, the fused
    CPU flash kernel measured ~1.5x slower per step (forward + backward)."""
    if device.type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return functools.partial(sdpa_kernel, [SDPBackend.MATH])
    return contextlib.nullcontext
