"""Model-FLOP utilisation on a CUDA GPU: a batched group of 2M models against one 200M model, bf16.

Issue 14's GPU question: the batching that keeps two CPU cores busy should turn small trials on a
GPU from launch-bound into compute-bound. Measured here, on the real training code paths
(``training.batched.train_batch`` and ``training.trainer.train``, ``train.device: cuda``, bf16
autocast) on a synthetic tier of the real a50 shape (55 features, 4,774 days):

* the default structure at **2M** parameters, K = 1, 8, 32 and 128 members as one ``train_batch``,
  and one member alone with ``trainer.train`` (the single-model path);
* one **200M** model of the default structure with ``trainer.train``, at batch 128 (the default)
  and 1,024.

Model FLOPs per window are counted by ``torch.utils.flop_counter`` (forward + backward of a
training batch, forward of evaluation; :func:`benchmarks.throughput.flops_per_sample`), so MFU =
K x (n_train x train FLOPs + n_val x eval FLOPs) / epoch seconds / peak. The epoch time is the
trainer's own ``epoch_seconds`` of the last epoch (the first pays for cuBLAS/cuDNN warm-up),
training and validation included. The peak is given twice: the H200's dense bf16 datasheet figure
(989 TFLOP/s) and an 8192^3 bf16 matmul measured in the same run.

``python -m benchmarks gpu_mfu`` on a machine with CUDA; on one without, it keeps the section of
BENCHMARKS.md as it is and says so. ``python -m benchmarks.gpu_mfu`` prints the section.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from typing import Any

NAME = "gpu_mfu"
TITLE = "GPU model-FLOP utilisation: a batched 2M group vs one 200M model (bf16, CUDA)"
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
GROUP_KS = (1, 8, 32, 64, 128)
EPOCHS = 3


def _peak_tflops(n: int = 8192, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _data(max_train: int | None = None):
    from training.synthetic import synthetic_tier

    data = synthetic_tier(n_days=4774, n_features=55, context_len=32, horizon=1, tier="synthetic-a50")
    ends = data.split_ends["train"]
    if max_train and len(ends) > max_train:
        data = dataclasses.replace(data, split_ends={**data.split_ends, "train": ends[-max_train:]})
    return data


def _configs(budget: str, data, k: int, batch_size: int, epochs: int):
    from common import config
    from training.budget import ModelParams
    from training.trainer import TrainConfig

    model = config.load(ModelParams, "model").solve(budget, data.n_features, data.context_len)
    base = config.load(TrainConfig, "train").to_dict()
    trains = [TrainConfig.from_dict(base | {"seed": s, "max_epochs": epochs, "patience": epochs, "progress": False,
                                            "device": "cuda", "batch_size": batch_size}) for s in range(1, k + 1)]
    return model, trains


def measure_case(label: str, budget: str, k: int, batched: bool, batch_size: int = 128,
                 max_train: int | None = None) -> dict[str, Any]:
    import torch

    from benchmarks.throughput import flops_per_sample
    from training.batched import train_batch
    from training.trainer import train

    data = _data(max_train)
    model, trains = _configs(budget, data, k, batch_size, EPOCHS)
    train_f, eval_f = flops_per_sample(model.to_dict(), 8)
    torch.cuda.reset_peak_memory_stats()
    wall = time.perf_counter()
    results = train_batch([model] * k, trains, data) if batched else [train(model, t, data) for t in trains]
    wall = time.perf_counter() - wall
    n_train, n_val = len(data.split_ends["train"]), len(data.split_ends["val"])
    last = sum(r.history[-1]["epoch_seconds"] for r in results) if not batched else results[0].history[-1]["epoch_seconds"]
    flops = k * (n_train * train_f + n_val * eval_f)
    return {"label": label, "budget": budget, "n_params": results[0].n_params, "k": k, "batch_size": batch_size,
            "n_train": n_train, "n_val": n_val, "epoch_s": last, "wall_s": wall, "tflops": flops / last / 1e12,
            "model_samples_per_s": k * n_train / last, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "ok": sum(r.ok for r in results), "auc": [r.val_metrics.get("val/auc") for r in results][:3]}


# The cases that answer the question first: a cut-short run still has the comparison.
CASES = [
    ("2M x 1, trainer.train", "2M", 1, False, 128, None),
    ("2M x 32, one train_batch", "2M", 32, True, 128, None),
    ("200M x 1, trainer.train, batch 128", "200M", 1, False, 128, 1024),
    *[(f"2M x {k}, one train_batch", "2M", k, True, 128, None) for k in GROUP_KS if k != 32],
    ("200M x 1, trainer.train, batch 1024", "200M", 1, False, 1024, 2048),
]
DEADLINE_S = 330  # no new case starts after this many seconds (a lent GPU's time is short)


def measure() -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(0)
    datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    out: dict[str, Any] = {"device": name, "torch": torch.__version__, "datasheet": datasheet,
                           "matmul": _peak_tflops(), "rows": [], "errors": []}
    started = time.perf_counter()
    for case in CASES:
        if time.perf_counter() - started > DEADLINE_S:
            out["errors"].append(f"{case[0]}: not run (past the {DEADLINE_S} s deadline)")
            continue
        try:
            row = measure_case(*case)
            out["rows"].append(row)
            print(f"gpu_mfu: {row['label']}: {row['epoch_s']:.2f} s/epoch, {row['tflops']:.1f} TFLOP/s, "
                  f"{row['peak_mem_gib']:.1f} GiB", file=sys.stderr, flush=True)
        except Exception as exc:  # one failing case must not cost the others (device time is scarce)
            out["errors"].append(f"{case[0]}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        torch.cuda.empty_cache()
    return out


def render(out: dict[str, Any]) -> str:
    peak, sheet = out["matmul"], out["datasheet"]
    lines = [
        f"Device: {out['device']}, torch {out['torch']}; bf16 8192^3 matmul measured in this run: "
        f"**{peak:.0f} TFLOP/s**" + (f"; datasheet dense bf16 {sheet:.0f} TFLOP/s." if sheet else "."),
        f"Synthetic tier of the a50 shape; default structure (`model` section), width solved per budget; "
        f"{EPOCHS} epochs, no early stopping; time = the last epoch's `epoch_seconds` (training + validation).",
        "",
        "| case | params | K | batch | train windows | s / epoch | model x samples / s | TFLOP/s | MFU (matmul) | "
        "MFU (datasheet) | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        sheet_mfu = f"{r['tflops'] / sheet:.1%}" if sheet else "n/a"
        lines.append(f"| {r['label']} | {r['n_params']:,} | {r['k']} | {r['batch_size']} | {r['n_train']:,} | "
                     f"{r['epoch_s']:.2f} | {r['model_samples_per_s']:,.0f} | {r['tflops']:.1f} | "
                     f"{r['tflops'] / peak:.1%} | {sheet_mfu} | {r['peak_mem_gib']:.1f} |")
    lines += [f"- failed: {e}" for e in out["errors"]]
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str | None:
    import torch

    if not torch.cuda.is_available():
        print("gpu_mfu: no CUDA device here; the section is kept as it is", file=sys.stderr)
        return None
    return render(measure())


if __name__ == "__main__":
    body = run()
    print(body if body is not None else "no CUDA device")
