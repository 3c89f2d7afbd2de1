"""Train K networks of one structure in one pass: the batched counterpart of :func:`training.trainer.train`.

* **Stacked weights.** Every parameter of the K members is one ``(K, ...)`` tensor; a linear
  layer is one ``baddbmm`` over ``(K, rows, in) x (K, in, out)``, attention is one
  ``scaled_dot_product_attention`` over the merged ``(K*B, heads, tokens, head_dim)`` batch
  (attention has no weights). Hand-written instead of ``torch.func.vmap`` over
  ``nn.TransformerEncoder``: vmap's batching rule for attention fell back to a slow path
  (1.41x at K=8 against 2.24x for stacked ``baddbmm`` on 2 threads, issue 14).
* **Same model as alone.** Member k is initialised exactly like ``trainer.train`` with its own
  seed (``torch.manual_seed(seed)`` then the module constructor; the weights are copied into
  the stack), draws its dropout masks from its own generator in the module's order, shuffles
  with its own seed, and follows the same warm-up/cosine schedule, clipping and AdamW update.
  So a member's metrics equal those of the same config trained alone up to float rounding
  (tests/test_batched.py: within 1e-6 AUC), and reruns on the CPU are bit-identical.
* **Members differ** in seed, lr, weight_decay, dropout, grad_clip, pos_weight, warmup_frac,
  patience, min_delta; everything that changes shapes or the step count (the structure,
  batch_size, max_epochs) is shared: :func:`group_key` is what may share a batch.
* **Own early stopping.** Each member keeps its best epoch; a member that stops (patience,
  NaN, or its ``on_epoch`` raised, e.g. ``optuna.TrialPruned``) is dropped from the stack, so
  it stops costing. The exception is kept in ``TrainResult.extra["exception"]`` for the caller.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit

from common.errors import TierHpoError
from evaluation.metrics import DEFAULT_ECE_BINS, EPOCH_METRIC_NAMES, classification_metrics
from training.dataset import TierData
from training.device import autocast_context, resolve_device, training_attention
from training.inference import SplitWindows, check_compatible
from training.model import ModelConfig, PatchTSTClassifier, count_parameters
from training.trainer import EpochReport, TrainConfig, TrainResult

SHARED_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "dropout")
SHARED_TRAIN_FIELDS = ("batch_size", "max_epochs", "device", "eval_batch_size")
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW defaults, as in trainer._optimizer


def group_key(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple:
    """Members with equal keys can be trained in one batch."""
    return (tuple(getattr(model_cfg, f) for f in SHARED_MODEL_FIELDS),
            tuple(getattr(train_cfg, f) for f in SHARED_TRAIN_FIELDS))


class StackedAdamW:
    """AdamW over stacked ``(K, ...)`` parameters with a per-member lr and weight decay.

    Hand-written because no torch optimiser takes per-element hyperparameters: ``lr`` and
    ``weight_decay`` are per param group (a scalar or 0-d tensor), and a stacked parameter holds
    K members. The update is torch's AdamW formula (decoupled decay, bias correction), done
    with ``torch._foreach_*`` over the parameter list and ``(K, 1, ...)`` broadcast views.
    Decay applies only where ``decay[i]`` (weights, not biases/norms/positions, as trainer).
    """

    def __init__(self, params: list[torch.Tensor], decay: list[bool], lr: torch.Tensor, wd: torch.Tensor) -> None:
        self.params, self.decay = params, decay
        self.base_lr, self.wd = lr, wd  # (K,)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def step(self, factor: torch.Tensor) -> None:
        """One update with ``lr_k = base_lr_k * factor_k``."""
        self.t += 1
        b1, b2 = BETAS
        lr = self.base_lr * factor  # (K,)
        bc1, bc2_sqrt = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        with torch.no_grad():
            grads = [p.grad for p in self.params]
            for p, d in zip(self.params, self.decay, strict=True):
                if d:
                    p.mul_(_bcast(1 - lr * self.wd, p))
            torch._foreach_lerp_(self.m, grads, 1 - b1)
            torch._foreach_mul_(self.v, b2)
            torch._foreach_addcmul_(self.v, grads, grads, 1 - b2)
            denom = torch._foreach_sqrt(self.v)
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, EPS)
            step = [_bcast(-lr / bc1, p) for p in self.params]
            torch._foreach_addcdiv_(self.params, torch._foreach_mul(self.m, step), denom)

    def keep(self, rows: torch.Tensor) -> None:
        self.m = [m[rows] for m in self.m]
        self.v = [v[rows] for v in self.v]
        self.base_lr, self.wd = self.base_lr[rows], self.wd[rows]


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _stack_members(model_cfgs: Sequence[ModelConfig], seeds: Sequence[int], device: torch.device):
    """Build each member as ``trainer.train`` would (same seed, same init); return the stacked
    parameters by name, the decay flags and each member's dropout generator (state after init)."""
    states, gens, n_params = [], [], 0
    for cfg, seed in zip(model_cfgs, seeds, strict=True):
        torch.manual_seed(seed)
        module = PatchTSTClassifier(cfg)
        n_params = count_parameters(module)
        states.append({n: p.detach() for n, p in module.named_parameters()})
        gen = torch.Generator(device=device)
        gen.set_state(torch.get_rng_state()) if device.type == "cpu" else gen.manual_seed(seed + 1)
        gens.append(gen)
    names = list(states[0])
    params = {n: torch.stack([s[n] for s in states]).to(device).requires_grad_() for n in names}
    decay = [params[n].ndim - 1 >= 2 and n != "pos" for n in names]
    return params, decay, gens, n_params


class StackedForward:
    """The functional forward of K :class:`PatchTSTClassifier` members (same order of dropout
    draws as the module: embedding, then per layer attention-residual, feed-forward inner,
    feed-forward residual)."""

    def __init__(self, cfg: ModelConfig, params: dict[str, torch.Tensor]) -> None:
        if cfg.attn_dropout > 0:
            raise TierHpoError("the batched trainer needs model.attn_dropout 0 (fused attention)")
        self.cfg, self.p = cfg, params
        self.skip = (cfg.context_len - cfg.patch_len) % cfg.step

    def __call__(self, x: torch.Tensor, dropout: list[float] | None, gens: list[torch.Generator]) -> torch.Tensor:
        """``x`` (K, B, L, F) or shared (B, L, F); ``dropout`` None = eval. Returns logits (K, B)."""
        cfg, p = self.cfg, self.p
        k = p["pos"].shape[0]
        if x.ndim == 3:
            x = x.unsqueeze(0).expand(k, *x.shape)
        batch = x.shape[1]
        if cfg.norm == "revin":
            mean = x.mean(dim=2, keepdim=True)
            std = torch.sqrt(x.var(dim=2, keepdim=True, unbiased=False) + 1e-5)
            x = (x - mean) / std * p["revin.weight"][:, None, None] + p["revin.bias"][:, None, None]
        x = x[:, :, self.skip:]
        if cfg.channel_independent:
            patches = x.unfold(2, cfg.patch_len, cfg.step)  # (K, B, N, F, P)
            tokens = patches.transpose(2, 3).reshape(k, batch * cfg.n_features, cfg.n_patches, cfg.patch_len)
        elif cfg.step == cfg.patch_len:
            tokens = x.reshape(k, batch, cfg.n_patches, cfg.patch_len * cfg.n_features)
        else:
            patches = x.unfold(2, cfg.patch_len, cfg.step)
            tokens = patches.transpose(3, 4).reshape(k, batch, cfg.n_patches, cfg.patch_len * cfg.n_features)
        rows, n, d = tokens.shape[1], cfg.n_patches, cfg.d_model
        h = _linear(tokens.reshape(k, rows * n, -1), p["embed.weight"], p["embed.bias"]).view(k, rows, n, d)
        h = self._drop(h + p["pos"][:, None], dropout, gens)
        heads, hd = cfg.n_heads, d // cfg.n_heads
        for i in range(cfg.n_layers):
            pre = f"encoder.layers.{i}."
            a = _layer_norm(h, p[pre + "norm1.weight"], p[pre + "norm1.bias"]).view(k, rows * n, d)
            qkv = _linear(a, p[pre + "self_attn.in_proj_weight"], p[pre + "self_attn.in_proj_bias"])
            qkv = qkv.view(k * rows, n, 3, heads, hd).permute(2, 0, 3, 1, 4)  # (3, K*B, H, N, hd)
            att = _attention(qkv[0], qkv[1], qkv[2])  # (K*B, H, N, hd)
            att = att.transpose(1, 2).reshape(k, rows * n, d)
            att = _linear(att, p[pre + "self_attn.out_proj.weight"], p[pre + "self_attn.out_proj.bias"])
            h = h + self._drop(att.view(k, rows, n, d), dropout, gens, tokens_major=True)
            f = _layer_norm(h, p[pre + "norm2.weight"], p[pre + "norm2.bias"]).view(k, rows * n, d)
            f = self._drop(F.gelu(_linear(f, p[pre + "linear1.weight"], p[pre + "linear1.bias"])), dropout, gens)
            f = _linear(f, p[pre + "linear2.weight"], p[pre + "linear2.bias"])
            h = h + self._drop(f.view(k, rows, n, d), dropout, gens)
        h = _layer_norm(h, p["encoder.norm.weight"], p["encoder.norm.bias"])
        h = h[:, :, -1] if cfg.pooling == "last" else h.mean(dim=2)  # (K, B', d)
        if cfg.channel_independent:
            h = h.reshape(k, batch, cfg.n_features * d)
        return _linear(h, p["head.weight"], p["head.bias"]).squeeze(-1)  # (K, B)

    @staticmethod
    def _drop(x: torch.Tensor, dropout: list[float] | None, gens: list[torch.Generator],
              tokens_major: bool = False) -> torch.Tensor:
        """Per-member inverted dropout; each mask is drawn like ``F.dropout`` on the CPU
        (``empty_like().bernoulli_(1 - p)``, scaled by ``1/(1 - p)``) from the member's generator.
        ``tokens_major``: the module's attention output is a transposed ``(N, B, d)`` tensor, and
        ``empty_like`` keeps its strides, so its mask is drawn in that memory order."""
        if dropout is None or not any(dropout):
            return x
        noise = torch.ones_like(x)
        for j, (rate, gen) in enumerate(zip(dropout, gens, strict=True)):
            if rate > 0:
                target = noise[j].transpose(0, 1) if tokens_major else noise[j]
                mask = torch.empty(target.shape, dtype=x.dtype, device=x.device)
                target.copy_(mask.bernoulli_(1 - rate, generator=gen).div_(1 - rate))
        return x * noise


MAX_ATTENTION_BATCH = 65535  # CUDA's flash attention refuses a larger batch (a grid dimension's limit)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` over the merged ``K x B`` batch, in slices of at most
    :data:`MAX_ATTENTION_BATCH`: 128 members x 652 validation windows (83,456) failed on an H200
    with "CUDA error: invalid argument" while 64 x 652 ran. Each window attends only to its own
    tokens, so slicing changes no result; below the limit it is one call, as before."""
    if q.shape[0] <= MAX_ATTENTION_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + MAX_ATTENTION_BATCH], k[i:i + MAX_ATTENTION_BATCH],
                                                     v[i:i + MAX_ATTENTION_BATCH])
                      for i in range(0, q.shape[0], MAX_ATTENTION_BATCH)])


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (K, R, in), weight (K, out, in) as nn.Linear stores it -> (K, R, out)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    shape = (weight.shape[0],) + (1,) * (x.ndim - 2) + (weight.shape[1],)
    return F.layer_norm(x, x.shape[-1:]) * weight.view(shape) + bias.view(shape)


def _factor(step: int, warmup_frac: float, total: int) -> float:
    """trainer._warmup_cosine's multiplier after ``step`` optimiser steps."""
    warmup = max(1, round(warmup_frac * total)) if warmup_frac > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_batch(
    model_cfgs: Sequence[ModelConfig],
    train_cfgs: Sequence[TrainConfig],
    data: TierData,
    on_epoch: Sequence[Callable[[EpochReport], None] | None] | None = None,
    *,
    ece_bins: int = DEFAULT_ECE_BINS,
) -> list[TrainResult]:
    """Train ``len(model_cfgs)`` members in lockstep; one :class:`TrainResult` per member, in order."""
    k_all = len(model_cfgs)
    if k_all == 0 or len(train_cfgs) != k_all or (on_epoch is not None and len(on_epoch) != k_all):
        raise TierHpoError("train_batch needs one model config, train config (and callback) per member")
    if len({group_key(m, t) for m, t in zip(model_cfgs, train_cfgs, strict=True)}) != 1:
        raise TierHpoError("train_batch members must share the structure, batch_size and max_epochs (group_key)")
    for cfg in model_cfgs:
        check_compatible(cfg, data)
    started = time.perf_counter()
    cfg0, tc0 = model_cfgs[0], train_cfgs[0]
    device = resolve_device(tc0.device)
    callbacks = list(on_epoch) if on_epoch is not None else [None] * k_all
    train_x, val_x = SplitWindows(data, "train", device), SplitWindows(data, "val", device)
    train_y = torch.from_numpy(data.labels_of("train")).to(device)
    val_y = data.labels_of("val")
    n_train = len(train_x)
    if n_train == 0 or len(val_x) == 0:
        raise TierHpoError(f"tier {data.tier or '?'} has no train or val windows at context_len {data.context_len}")
    params, decay, gens, n_params = _stack_members(model_cfgs, [t.seed for t in train_cfgs], device)
    names = list(params)
    forward = StackedForward(cfg0, params)
    opt = StackedAdamW([params[n] for n in names], decay,
                       torch.tensor([t.lr for t in train_cfgs], device=device),
                       torch.tensor([t.weight_decay for t in train_cfgs], device=device))
    shuffles = [torch.Generator().manual_seed(t.seed) for t in train_cfgs]
    total = math.ceil(n_train / tc0.batch_size) * tc0.max_epochs
    autocast, attention = autocast_context(device), training_attention(device)

    live = list(range(k_all))  # member ids still in the stack, in stack order
    best = [{"auc": -math.inf, "epoch": 0, "pred": None, "state": None} for _ in range(k_all)]
    out: list[dict] = [{"status": "completed", "reason": f"ran all {tc0.max_epochs} epochs", "epochs": 0,
                        "history": [], "extra": {}, "seconds": 0.0} for _ in range(k_all)]
    step = 0
    for epoch in range(1, tc0.max_epochs + 1):
        epoch_start = time.perf_counter()
        cfgs = [train_cfgs[m] for m in live]
        orders = torch.stack([torch.randperm(n_train, generator=shuffles[m]) for m in live]).to(device)
        pos_weight = torch.tensor([[c.pos_weight or 1.0] for c in cfgs], device=device)
        clips = torch.tensor([c.grad_clip for c in cfgs], device=device)
        rates = [model_cfgs[m].dropout for m in live]
        member_gens = [gens[m] for m in live]
        loss_sum = torch.zeros(len(live), device=device)
        for start in range(0, n_train, tc0.batch_size):
            batch = orders[:, start:start + tc0.batch_size]  # (K, B)
            flat = train_x.take(batch.reshape(-1))  # (K*B, L, F)
            x = flat.view(*batch.shape, *flat.shape[1:])
            y = train_y[batch]
            with autocast, attention():
                logits = forward(x, rates, member_gens).float()
            losses = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none").mean(1)
            for p in opt.params:
                p.grad = None
            losses.sum().backward()
            _clip(opt.params, clips)
            opt.step(torch.tensor([_factor(step, c.warmup_frac, total) for c in cfgs], device=device))
            step += 1
            loss_sum += losses.detach() * batch.shape[1]
        train_loss = (loss_sum / n_train).tolist()
        val_pred = _val_predictions(forward, val_x, tc0.eval_batch_size, autocast)  # (K, n_val)
        lr_now = [c.lr * _factor(step, c.warmup_frac, total) for c in cfgs]
        seconds = time.perf_counter() - epoch_start
        stop = []
        for j, m in enumerate(live):
            o, b, c = out[m], best[m], train_cfgs[m]
            o["epochs"], o["seconds"] = epoch, time.perf_counter() - started
            pred = val_pred[j]
            if not math.isfinite(train_loss[j]) or not np.isfinite(pred).all():
                what = f"training loss ({train_loss[j]})" if not math.isfinite(train_loss[j]) else "validation predictions"
                o["status"], o["reason"] = "nan_loss", f"non-finite {what} in epoch {epoch}"
                stop.append(j)
                continue
            metrics = classification_metrics(val_y, pred, "val", data.base_rate, ece_bins, names=EPOCH_METRIC_NAMES)
            auc = metrics["val/auc"] if math.isfinite(metrics["val/auc"]) else -math.inf
            if auc > b["auc"] + c.min_delta or b["epoch"] == 0:
                b.update(auc=auc, epoch=epoch, pred=pred,
                         state={n: params[n][j].detach().to("cpu", copy=True) for n in names})
            report = EpochReport(epoch, train_loss[j], metrics, b["auc"], lr_now[j], seconds)
            o["history"].append(report.as_dict())
            try:
                if callbacks[m] is not None:
                    callbacks[m](report)
            except Exception as exc:  # the member's own stop (e.g. optuna.TrialPruned); others go on
                o["status"], o["reason"], o["extra"]["exception"] = "stopped", f"{type(exc).__name__}: {exc}", exc
                stop.append(j)
                continue
            if epoch - b["epoch"] >= c.patience and epoch < c.max_epochs:
                o["status"] = "early_stopped"
                o["reason"] = f"no val/auc gain > {c.min_delta:g} for {c.patience} epochs"
                stop.append(j)
        if stop:
            keep = [j for j in range(len(live)) if j not in stop]
            live = [live[j] for j in keep]
            if not live:
                break
            rows = torch.tensor(keep, device=device)
            for n in names:
                params[n] = params[n].detach()[rows].requires_grad_()
            opt.params = [params[n] for n in names]
            opt.keep(rows)

    results = []
    for m in range(k_all):
        b, o = best[m], out[m]
        metrics = classification_metrics(val_y, b["pred"], "val", data.base_rate, ece_bins) if b["pred"] is not None else {}
        results.append(TrainResult(
            status=o["status"], reason=o["reason"], best_epoch=b["epoch"], epochs_run=o["epochs"],
            history=o["history"], val_metrics=metrics, val_pred=b["pred"], state_dict=b["state"], n_params=n_params,
            model_config=model_cfgs[m], train_config=train_cfgs[m], train_seconds=o["seconds"], device=str(device),
            extra={**o["extra"], "batched": k_all}))
    return results


def _clip(params: list[torch.Tensor], clips: torch.Tensor) -> None:
    """Per-member ``clip_grad_norm_``: each member's global grad norm over all its tensors."""
    if not bool((clips > 0).any()):
        return
    with torch.no_grad():
        sq = torch.stack([p.grad.reshape(p.shape[0], -1).pow(2).sum(1) for p in params]).sum(0)
        coef = torch.clamp(clips / (sq.sqrt() + 1e-6), max=1.0)
        coef = torch.where(clips > 0, coef, torch.ones_like(coef))
        torch._foreach_mul_([p.grad for p in params], [_bcast(coef, p) for p in params])


def _val_predictions(forward: StackedForward, windows: SplitWindows, batch_size: int, autocast) -> np.ndarray:
    out = []
    with torch.inference_mode(), autocast:
        for start in range(0, len(windows), batch_size):
            out.append(forward(windows.span(start, start + batch_size), None, []).float())
    return expit(torch.cat(out, dim=1).double().cpu().numpy())
