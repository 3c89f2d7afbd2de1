"""Memory limits: the largest model a device can train, known before anything is allocated.

Two checks, both from arithmetic on the config (nothing is built or allocated):

* :func:`check_budget` (CLI, before the data is even loaded): a budget of ``n`` parameters needs
  at least ``16 n`` bytes for training (fp32 weights 4, gradients 4, AdamW's two moments 8), whatever
  the structure. ``--budget 100B`` needs 1.6 TB and is refused with one line that names the limit
  and how to raise it.
* :func:`guard` (the trainer, before it builds the model): the full estimate of one trial, weights +
  optimiser state + activations of one training batch + the device copy of the data. A trial over
  the limit raises :class:`MemoryLimitError`; the HPO objective records it as that trial's FAIL
  (``fail_reason`` in its user attrs) and the study goes on, instead of the OOM killer ending the
  process.

The limit is ``train.max_memory_gb`` (params.yaml) or ``--max-memory-gb``; by default
:data:`DEFAULT_FRACTION` of the device's memory (the CUDA device's total, or the machine's RAM).
The activation estimate is an upper-bound rule of thumb for a pre-norm transformer encoder
(per token and layer: ~12 ``d_model`` floats for the residual stream, norms, q/k/v and projections,
3 ``d_ff`` floats for the feed-forward, and ``n_heads x tokens`` attention scores), not a
measurement; a library would need the model on a real device (``torch.cuda.max_memory_allocated``),
which is exactly the allocation the guard is there to avoid. See docs/limits.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.errors import TierHpoError

BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
DEFAULT_FRACTION = 0.8  # of the device's memory, when no explicit limit is given
GB = 10**9
RAISE_HINT = "raise it with --max-memory-gb or train.max_memory_gb in params.yaml if the memory is there"


class MemoryLimitError(TierHpoError):
    """A model or trial that would not fit in the memory limit (one line, the numbers in it)."""


def device_memory_bytes(device: str = "auto") -> tuple[int, str]:
    """``(bytes, what)``: the total memory of the device training would use."""
    if device in ("auto", "cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.get_device_properties(0).total_memory), "the CUDA device's"
        except Exception:  # no usable CUDA: fall back to the host
            pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's"
    except (ValueError, OSError, AttributeError):
        return 16 * GB, "an assumed"


@dataclass(frozen=True)
class Limit:
    bytes: int
    source: str  # for messages: "--max-memory-gb 8" or "80% of this machine's 128 GB"


def limit(max_memory_gb: float | None = None, device: str = "auto") -> Limit:
    """The memory limit in bytes: explicit, or :data:`DEFAULT_FRACTION` of the device."""
    if max_memory_gb is not None:
        if not max_memory_gb > 0:
            raise TierHpoError(f"train.max_memory_gb must be > 0, got {max_memory_gb}")
        return Limit(int(max_memory_gb * GB), f"max_memory_gb {max_memory_gb:g}")
    total, what = device_memory_bytes(device)
    return Limit(int(DEFAULT_FRACTION * total), f"{DEFAULT_FRACTION:.0%} of {what} {fmt_bytes(total)}")


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 10**12), ("GB", GB), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def state_bytes(n_params: int) -> int:
    """Weights, gradients and AdamW state of ``n_params`` fp32 parameters."""
    return BYTES_PER_PARAM * n_params


def max_budget(lim: Limit) -> int:
    """The largest parameter count whose training state alone fits in ``lim``."""
    return lim.bytes // BYTES_PER_PARAM


def check_budget(budget: str | int, max_memory_gb: float | None = None, device: str = "auto") -> int:
    """The parsed budget, or a one-line :class:`MemoryLimitError` if its training state alone
    (16 bytes a parameter) exceeds the memory limit."""
    from training.budget import format_budget, parse_budget

    n = parse_budget(budget)
    lim = limit(max_memory_gb, device)
    if state_bytes(n) > lim.bytes:
        raise MemoryLimitError(
            f"budget {budget} needs at least {fmt_bytes(state_bytes(n))} to train (weights, gradients and AdamW "
            f"state, {BYTES_PER_PARAM} bytes a parameter), over the memory limit of {fmt_bytes(lim.bytes)} "
            f"({lim.source}); the largest budget that fits is {format_budget(max_budget(lim))}; {RAISE_HINT}"
        )
    return n


def activation_bytes(cfg, batch_size: int) -> int:
    """Activations kept for the backward pass of one batch (fp32; an upper bound, see module doc)."""
    tokens = cfg.n_patches
    sequences = batch_size * (cfg.n_features if cfg.channel_independent else 1)
    per_token_layer = 12 * cfg.d_model + 3 * cfg.d_ff + cfg.n_heads * tokens
    return 4 * sequences * tokens * (cfg.n_layers * per_token_layer + 4 * cfg.d_model)


def trial_bytes(cfg, n_params: int, batch_size: int, eval_batch_size: int, n_rows: int) -> int:
    """One training run: state + training-batch activations + the eval batch's forward pass
    (no gradients: one layer's worth at a time) + the data on the device (two split copies)."""
    eval_cfg_bytes = activation_bytes(cfg, eval_batch_size) // max(cfg.n_layers, 1)
    data = 2 * 4 * n_rows * cfg.n_features
    return state_bytes(n_params) + activation_bytes(cfg, batch_size) + eval_cfg_bytes + data


def guard(cfg, n_params: int, batch_size: int, eval_batch_size: int, n_rows: int,
          max_memory_gb: float | None = None, device: str = "auto") -> int:
    """Raise :class:`MemoryLimitError` if one run of ``cfg`` would exceed the limit; else its estimate."""
    need = trial_bytes(cfg, n_params, batch_size, eval_batch_size, n_rows)
    lim = limit(max_memory_gb, device)
    if need > lim.bytes:
        raise MemoryLimitError(
            f"this trial needs about {fmt_bytes(need)} ({fmt_bytes(state_bytes(n_params))} weights and optimiser, "
            f"{fmt_bytes(activation_bytes(cfg, batch_size))} activations at batch_size {batch_size}), over the "
            f"memory limit of {fmt_bytes(lim.bytes)} ({lim.source}); use a smaller batch_size or budget, or {RAISE_HINT}"
        )
    return need
