"""Train one :class:`~training.model.PatchTSTClassifier` on one tier: the unit of work of an HPO trial.

* AdamW (fused kernel), linear warm-up then cosine decay per step, gradient-norm clipping,
  BCE-with-logits with an optional ``pos_weight``.
* Early stopping on validation AUC, not validation loss: loss rewards collapsing towards the
  base rate. The best epoch's weights and validation predictions are returned.
* Data stays preloaded as one ``(N, F)`` tensor; a batch is an index gather of ``(B, L)`` rows,
  so there is no per-sample Python and no ``DataLoader`` in the hot loop.
* CUDA with bf16 autocast when available, else CPU in fp32. Seeded: on the CPU the same config
  and seed give bit-identical metrics (with the same thread count). The thread count is the
  caller's choice (CLI / worker), never set here.
* ``on_epoch(EpochReport)`` sees every epoch (Optuna pruning, MLflow step metrics); whatever it
  raises (e.g. ``optuna.TrialPruned``) propagates. A NaN/Inf loss ends the run with
  ``status="nan_loss"`` and a reason. The test split is never read here.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.special import expit
from torch import nn
from tqdm.auto import tqdm

from common.errors import TierHpoError
from evaluation.metrics import DEFAULT_ECE_BINS, EPOCH_METRIC_NAMES, classification_metrics
from training.dataset import TierData
from training.device import autocast_context, resolve_device, training_attention
from training.inference import SplitWindows, check_compatible, split_logits
from training.model import ModelConfig, PatchTSTClassifier, count_parameters

STATUSES = ("completed", "early_stopped", "nan_loss")


@dataclass(frozen=True)
class TrainConfig:
    """``params.yaml`` section ``train`` (the HPO overrides lr, weight_decay, batch_size, ...)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    max_epochs: int = 20
    patience: int = 5  # epochs without a val/auc gain > min_delta before stopping
    min_delta: float = 0.0
    warmup_frac: float = 0.05  # share of all optimiser steps spent in linear warm-up
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    pos_weight: float | None = None  # BCE positive-class weight; None = unweighted
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, else mps (Apple silicon), else cpu
    progress: bool = True  # tqdm bars (also silent when stderr is not a terminal)
    eval_batch_size: int = 4096
    max_memory_gb: float | None = None  # memory limit of one run (training.memory); None = 80 % of the device

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 1,
            "max_epochs": self.max_epochs >= 1,
            "patience": self.patience >= 1,
            "min_delta": self.min_delta >= 0,
            "warmup_frac": 0 <= self.warmup_frac < 1,
            "grad_clip": self.grad_clip >= 0,
            "pos_weight": self.pos_weight is None or self.pos_weight > 0,
            "eval_batch_size": self.eval_batch_size >= 1,
            "max_memory_gb": self.max_memory_gb is None or self.max_memory_gb > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise TierHpoError(f"train: invalid value for {bad[0]}: {getattr(self, bad[0])!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise TierHpoError(f"train.device must be auto, cpu, cuda or mps, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        from common.config import build

        return build(cls, raw, where="train_config")


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    train_loss: float  # mean training loss of the epoch ("train/loss")
    metrics: dict[str, float]  # "val/..." metrics of this epoch (EPOCH_METRIC_NAMES)
    best_auc: float  # best val/auc so far (this epoch included)
    lr: float  # learning rate at the end of the epoch
    seconds: float  # wall time of the epoch (training + evaluation)

    def as_dict(self) -> dict[str, float]:
        """Flat step metrics: ``epoch, train/loss, lr, epoch_seconds, val/*``."""
        return {"epoch": self.epoch, "train/loss": self.train_loss, "lr": self.lr,
                "epoch_seconds": self.seconds, **self.metrics}


@dataclass
class TrainResult:
    status: str  # one of STATUSES
    reason: str
    best_epoch: int  # 0 = no epoch finished
    epochs_run: int
    history: list[dict[str, float]]  # EpochReport.as_dict() per epoch
    val_metrics: dict[str, float]  # every "val/*" metric (METRIC_NAMES) at the best epoch ({} if none)
    val_pred: np.ndarray | None  # (n_val,) best-epoch validation probabilities
    state_dict: dict[str, torch.Tensor] | None  # best weights, CPU tensors
    n_params: int
    model_config: ModelConfig
    train_config: TrainConfig
    train_seconds: float
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "early_stopped")


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TierData,
    on_epoch: Callable[[EpochReport], None] | None = None,
    *,
    ece_bins: int = DEFAULT_ECE_BINS,
) -> TrainResult:
    """Train on ``data``'s train split with early stopping on its val split; see the module doc.

    ``ece_bins`` is ``metrics.ece_bins`` (the ``metrics`` section owns it, not ``train``)."""
    check_compatible(model_cfg, data)
    started = time.perf_counter()
    device = resolve_device(train_cfg.device)
    _memory_guard(model_cfg, train_cfg, data, device)
    torch.manual_seed(train_cfg.seed)  # weights init and dropout
    shuffle = torch.Generator().manual_seed(train_cfg.seed)

    train_x = SplitWindows(data, "train", device)
    train_y = torch.from_numpy(data.labels_of("train")).to(device)  # (n_train,)
    val_x = SplitWindows(data, "val", device)
    val_y = data.labels_of("val")
    n_train = len(train_x)
    if n_train == 0 or len(val_x) == 0:
        raise TierHpoError(f"tier {data.tier or '?'} has no train or val windows at context_len {data.context_len}")

    model = PatchTSTClassifier(model_cfg).to(device)
    n_params = count_parameters(model)
    optimizer = _optimizer(model, train_cfg, device)
    steps_per_epoch = math.ceil(n_train / train_cfg.batch_size)
    scheduler = _warmup_cosine(optimizer, train_cfg.warmup_frac, steps_per_epoch * train_cfg.max_epochs)
    pos_weight = None if train_cfg.pos_weight is None else torch.tensor(train_cfg.pos_weight, device=device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    autocast = autocast_context(device)
    attention = training_attention(device)
    base_rate = data.base_rate

    history: list[dict[str, float]] = []
    best = {"auc": -math.inf, "epoch": 0, "metrics": {}, "pred": None, "state": None}
    status, reason, epochs_run = "completed", f"ran all {train_cfg.max_epochs} epochs", 0
    quiet = None if train_cfg.progress else True  # None: tqdm disables itself off a TTY
    epochs_bar = tqdm(range(1, train_cfg.max_epochs + 1), desc="epochs", unit="ep", disable=quiet,
                      file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        for epoch in epochs_bar:
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(n_train, generator=shuffle).to(device)
            loss_sum = torch.zeros((), device=device)
            for start in tqdm(range(0, n_train, train_cfg.batch_size), desc=f"epoch {epoch}", unit="batch",
                              disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True):
                batch = order[start:start + train_cfg.batch_size]
                x = train_x.take(batch)  # (B, L, F)
                y = train_y[batch]
                with autocast, attention():
                    loss = loss_fn(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if train_cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip, foreach=True)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * len(batch)
            epochs_run = epoch
            train_loss = float(loss_sum) / n_train  # one sync per epoch, not per step
            if not math.isfinite(train_loss):
                status, reason = "nan_loss", f"non-finite training loss ({train_loss}) in epoch {epoch}"
                break
            pred = expit(split_logits(model, val_x, train_cfg.eval_batch_size, autocast))
            if not np.isfinite(pred).all():
                status, reason = "nan_loss", f"non-finite validation predictions in epoch {epoch}"
                break
            metrics = classification_metrics(val_y, pred, "val", base_rate, ece_bins, names=EPOCH_METRIC_NAMES)
            auc = metrics["val/auc"] if math.isfinite(metrics["val/auc"]) else -math.inf
            if auc > best["auc"] + train_cfg.min_delta or best["epoch"] == 0:
                best.update(auc=auc, epoch=epoch, pred=pred, state=_cpu_state(model))
            report = EpochReport(epoch, train_loss, metrics, best["auc"], optimizer.param_groups[0]["lr"],
                                 time.perf_counter() - epoch_start)
            history.append(report.as_dict())
            epochs_bar.set_postfix(loss=f"{train_loss:.4f}", auc=f"{auc:.4f}", best=f"{best['auc']:.4f}")
            if on_epoch is not None:
                on_epoch(report)
            if epoch - best["epoch"] >= train_cfg.patience and epoch < train_cfg.max_epochs:
                status = "early_stopped"
                reason = f"no val/auc gain > {train_cfg.min_delta:g} for {train_cfg.patience} epochs"
                break
    finally:
        epochs_bar.close()

    if best["pred"] is not None:
        best["metrics"] = classification_metrics(val_y, best["pred"], "val", base_rate, ece_bins)
    return TrainResult(
        status=status,
        reason=reason,
        best_epoch=best["epoch"],
        epochs_run=epochs_run,
        history=history,
        val_metrics=best["metrics"],
        val_pred=best["pred"],
        state_dict=best["state"],
        n_params=n_params,
        model_config=model_cfg,
        train_config=train_cfg,
        train_seconds=time.perf_counter() - started,
        device=str(device),
    )


def _memory_guard(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TierData, device: torch.device) -> None:
    """Refuse (``MemoryLimitError``, before any allocation) a run that would exhaust memory: the
    HPO objective records it as that trial's FAIL with the reason (training.memory)."""
    from training.budget import count_params
    from training.memory import guard

    guard(model_cfg, count_params(model_cfg), train_cfg.batch_size, train_cfg.eval_batch_size, len(data.features),
          train_cfg.max_memory_gb, device.type)


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on biases, norms and the positional embedding (the usual transformer recipe).
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "pos"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "pos"]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists for CPU and CUDA and removes most per-step optimiser overhead.
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def _warmup_cosine(optimizer: torch.optim.Optimizer, warmup_frac: float, total_steps: int):
    warmup = max(1, round(warmup_frac * total_steps)) if warmup_frac > 0 else 0

    def factor(step: int) -> float:  # multiplier of the base lr after `step` optimiser steps
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
