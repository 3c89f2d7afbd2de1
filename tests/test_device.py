"""``train.device``: which device ``auto`` picks and the precision used there (no GPU needed: the
availability checks are monkeypatched)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from common.errors import TierHpoError
from training import device
from training.device import autocast_context, resolve_device
from training.trainer import TrainConfig


def _available(monkeypatch, *, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(("cuda", "mps", "picked"), [
    (True, True, "cuda"),  # CUDA first
    (True, False, "cuda"),
    (False, True, "mps"),  # Apple silicon without CUDA
    (False, False, "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, picked):
    _available(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto").type == picked


def test_explicit_devices_insist(monkeypatch):
    _available(monkeypatch, cuda=False, mps=False)
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(TierHpoError, match="'cuda'"):
        resolve_device("cuda")
    with pytest.raises(TierHpoError, match="'mps'"):
        resolve_device("mps")
    _available(monkeypatch, cuda=False, mps=True)
    assert resolve_device("mps").type == "mps"
    assert TrainConfig(device="mps").device == "mps"
    with pytest.raises(TierHpoError, match="auto, cpu, cuda or mps"):
        TrainConfig(device="tpu")


def test_fp32_on_mps_and_cpu_bf16_only_on_cuda(monkeypatch):
    # No autocast on MPS: the trainer runs there in fp32, like on the CPU.
    for name in ("mps", "cpu"):
        ctx = autocast_context(torch.device(name))
        assert isinstance(ctx, contextlib.nullcontext), name
    seen = {}
    monkeypatch.setattr(device.torch, "autocast", lambda kind, dtype: seen.setdefault(kind, dtype))
    autocast_context(torch.device("cuda"))
    assert seen == {"cuda": torch.bfloat16}
