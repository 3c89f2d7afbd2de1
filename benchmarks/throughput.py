"""Trainer throughput: ``training.trainer.train`` vs a straightforward reference loop.

Both train the same shape of network (same patch tokens, width, depth, heads, FFN) on the same
tier for the same number of epochs, evaluating the validation split after every epoch; the
timed span is the *whole trial* (model build, data movement, training, evaluation, metrics).

The reference is what a first version looks like: a ``Dataset`` whose ``__getitem__`` slices
one window, a shuffling ``DataLoader`` with default collation, a plain (post-norm, ReLU)
``nn.TransformerEncoder``, ``AdamW`` with default options, ``loss.item()`` per step and a
``DataLoader`` pass over the validation split under ``no_grad`` with an sklearn AUC.

Each trial runs in its own spawned process (its own peak RSS), after an identical warm-up of
both code paths so one-off import and first-call costs count for neither. FLOPs come from
``torch.utils.flop_counter`` (forward + backward of a training batch, forward of an eval
batch); the fp32 matmul peak is measured in the same run with the same thread count.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks._common import (
    data_spec,
    describe_data,
    in_child,
    load_data,
    machine,
    matmul_peak_gflops,
    peak_child,
    peak_rss_mb,
    rss_mb,
)
from benchmarks._common import (
    threads as bench_threads,
)

NAME = "throughput"
TITLE = "Trainer throughput vs a reference loop (CPU)"

SMALL_TARGET = 2.0  # x reference samples/s at the default CPU budgets
LARGE_BUDGET = "2M"
LARGE_PEAK_TARGET = 0.50  # share of the fp32 matmul peak at 2M parameters


# ----------------------------------------------------------------------------- reference loop


def reference_model(cfg):
    """The same token shapes as PatchTSTClassifier, built the plain way."""
    import torch
    from torch import nn

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(cfg.patch_len * cfg.n_features, cfg.d_model)
            self.pos = nn.Parameter(torch.zeros(cfg.n_patches, cfg.d_model))
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            self.head = nn.Linear(cfg.d_model, 1)

        def forward(self, x):  # (B, L, F), stride == patch_len
            x = x[:, x.shape[1] - cfg.n_patches * cfg.patch_len:]
            tokens = x.reshape(x.shape[0], cfg.n_patches, cfg.patch_len * cfg.n_features)
            h = self.encoder(self.embed(tokens) + self.pos)
            return self.head(h[:, -1]).squeeze(-1)

    return Reference()


def reference_trial(cfg, data, epochs: int, batch_size: int, lr: float, seed: int = 0) -> dict[str, Any]:
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    class Windows(Dataset):
        def __init__(self, split: str) -> None:
            self.ends = data.split_ends[split]

        def __len__(self) -> int:
            return len(self.ends)

        def __getitem__(self, i):
            end = self.ends[i]
            window = data.features[end - data.context_len + 1:end + 1]
            return torch.from_numpy(window), torch.tensor(data.labels[end])

    torch.manual_seed(seed)
    model = reference_model(cfg)
    train_loader = DataLoader(Windows("train"), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(Windows("val"), batch_size=batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    best_auc = 0.0
    for _ in range(epochs):
        model.train()
        total = 0.0
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        model.eval()
        preds, labels = [], []
        with torch.no_grad():
            for x, y in val_loader:
                preds.append(torch.sigmoid(model(x)))
                labels.append(y)
        auc = roc_auc_score(torch.cat(labels).numpy(), torch.cat(preds).numpy().astype(np.float64))
        best_auc = max(best_auc, auc)
    return {"val_auc": best_auc}


def our_trial(cfg, data, epochs: int, batch_size: int, lr: float, seed: int = 0) -> dict[str, Any]:
    from training.trainer import TrainConfig, train

    tcfg = TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=epochs, seed=seed, progress=False)
    result = train(cfg, tcfg, data)
    return {"val_auc": result.val_metrics["val/auc"], "status": result.status}


# ----------------------------------------------------------------------------- one child


def trial_child(kind: str, model_cfg: dict[str, Any], spec: dict[str, Any], epochs: int, batch_size: int,
                threads: int, lr: float) -> dict[str, Any]:
    import dataclasses

    import torch

    from training.model import ModelConfig

    torch.set_num_threads(threads)
    data = load_data(spec)
    cfg = ModelConfig.from_dict(model_cfg)
    # Identical warm-up of both code paths (imports, first calls, allocator), untimed.
    tiny = dataclasses.replace(cfg, d_model=8, n_heads=2, d_ff=8, n_layers=1)
    our_trial(tiny, data, 1, batch_size, lr)
    reference_trial(tiny, data, 1, batch_size, lr)
    peak = matmul_peak_gflops(threads, 1024, seconds=1.0)  # the peak under this child's conditions
    base = rss_mb()
    run = our_trial if kind == "ours" else reference_trial
    started = time.perf_counter()
    out = run(cfg, data, epochs, batch_size, lr)
    seconds = time.perf_counter() - started
    return {**out, "seconds": seconds, "n_train": len(data.split_ends["train"]), "n_val": len(data.split_ends["val"]),
            "rss_over_base_mb": max(0.0, peak_rss_mb() - base), "peak_rss_mb": peak_rss_mb(), "peak_gflops": peak}


def flops_per_sample(model_cfg: dict[str, Any], batch_size: int) -> tuple[float, float]:
    """(training forward+backward, evaluation forward) FLOPs per window, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.model import ModelConfig, PatchTSTClassifier

    cfg = ModelConfig.from_dict(model_cfg)
    model = PatchTSTClassifier(cfg)
    x = torch.randn(batch_size, cfg.context_len, cfg.n_features)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    train_flops = counter.get_total_flops() / batch_size
    model.eval()  # grad mode on: the decomposed path, so attention matmuls are counted too
    with FlopCounterMode(display=False) as counter:
        model(x)
    return train_flops, counter.get_total_flops() / batch_size


# ----------------------------------------------------------------------------- the benchmark


def configs(spec: dict[str, Any], n_features: int, context_len: int) -> list[tuple[str, Any]]:
    from common import config
    from training.budget import ModelParams, parse_budget

    params = config.load_params()
    model = config.build(ModelParams, params.get("model") or {}, where="model")
    budgets = (params.get("hpo") or {}).get("budgets") or ["20K", "60K", "200K"]
    out = []
    for budget in sorted({*budgets, LARGE_BUDGET}, key=parse_budget):
        cfg = model.solve(budget, n_features, context_len)
        if cfg is None:
            raise RuntimeError(f"the default structure is infeasible at {budget}; adjust params.yaml model")
        out.append((budget, cfg))
    return out


def run(quick: bool = False) -> str:
    from common import config
    from training.budget import count_params, parse_budget

    threads = bench_threads()
    spec = data_spec()
    data = load_data(spec)
    train_params = config.load_params().get("train") or {}
    batch_size = int(train_params.get("batch_size", 128))
    lr = float(train_params.get("lr", 1e-3))
    reps = 1 if quick else 2
    where = machine()
    # A busy machine depresses any one peak measurement: take the best of a standalone one and
    # of those made inside every trial process right before its timed trial.
    peaks = [in_child(peak_child, threads=threads)["gflops"]]
    cells = []
    for budget, cfg in configs(spec, data.n_features, data.context_len):
        large = parse_budget(budget) >= parse_budget(LARGE_BUDGET)
        epochs = (1 if quick else 2) if large else (2 if quick else 6)
        train_f, eval_f = flops_per_sample(cfg.to_dict(), batch_size)
        runs: dict[str, list[dict[str, Any]]] = {"ref": [], "ours": []}
        for rep in range(reps):
            order = ("ref", "ours") if rep % 2 == 0 else ("ours", "ref")  # cancel drift
            for kind in order:
                runs[kind].append(in_child(trial_child, kind=kind, model_cfg=cfg.to_dict(), spec=spec, epochs=epochs,
                                           batch_size=batch_size, threads=threads, lr=lr))
                peaks.append(runs[kind][-1]["peak_gflops"])
        cells.append((budget, cfg, large, epochs, train_f, eval_f, runs))
    peak = max(peaks)

    rows, verdicts = [], []
    for budget, cfg, large, epochs, train_f, eval_f, runs in cells:
        stats = {}
        for kind, results in runs.items():
            seconds = statistics.median(r["seconds"] for r in results)
            n_train, n_val = results[0]["n_train"], results[0]["n_val"]
            flops = epochs * (n_train * train_f + n_val * eval_f)
            stats[kind] = {
                "samples_s": n_train * epochs / seconds,
                "share": flops / seconds / 1e9 / peak,
                "rss": statistics.median(r["rss_over_base_mb"] for r in results),
                "auc": statistics.median(r["val_auc"] for r in results),
                "seconds": seconds,
            }
        speedup = stats["ours"]["samples_s"] / stats["ref"]["samples_s"]
        rows.append((budget, count_params(cfg), cfg, epochs, stats, speedup))
        if large:
            ok = speedup >= 1.0 and stats["ours"]["share"] >= LARGE_PEAK_TARGET
            verdicts.append(f"- {budget}: {speedup:.2f}x the reference (target >= 1x) and "
                            f"{stats['ours']['share']:.0%} of the matmul peak (target >= {LARGE_PEAK_TARGET:.0%}): "
                            f"**{'met' if ok else 'NOT met'}**")
        else:
            ok = speedup >= SMALL_TARGET
            verdicts.append(f"- {budget}: {speedup:.2f}x the reference's samples/s over the whole trial "
                            f"(target >= {SMALL_TARGET:g}x): **{'met' if ok else 'NOT met'}**")

    lines = [
        f"Machine: {where}; {threads} torch threads; fp32 matmul peak measured in this run: **{peak:.0f} GFLOP/s**.",
        f"Data: {describe_data(spec, data)}. Batch size {batch_size}, lr {lr:g}; median of {reps} interleaved "
        "runs per cell, each in a fresh process; the whole trial is timed (build, training, per-epoch "
        "validation with metrics).",
        "",
        "| budget | real params | d_model x layers | epochs | reference samples/s | ours samples/s | speed-up "
        "| ours % of peak | reference % of peak | peak RSS over start, ours / ref (MB) | best val AUC ours / ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, n_params, cfg, epochs, s, speedup in rows:
        lines.append(
            f"| {budget} | {n_params:,} | {cfg.d_model} x {cfg.n_layers} | {epochs} | {s['ref']['samples_s']:,.0f} "
            f"| {s['ours']['samples_s']:,.0f} | **{speedup:.2f}x** | {s['ours']['share']:.0%} | {s['ref']['share']:.0%} "
            f"| {s['ours']['rss']:.0f} / {s['ref']['rss']:.0f} | {s['ours']['auc']:.3f} / {s['ref']['auc']:.3f} |"
        )
    lines += ["", "Targets (issue 3):", *verdicts]
    if quick:
        lines += ["", "_Quick run (`--quick`): fewer epochs and repeats; rerun without it for the record._"]
    return "\n".join(lines)
