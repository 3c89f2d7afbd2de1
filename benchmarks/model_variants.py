"""Model design choices measured on the tier: channel-mixing vs channel-independent patches,
global standardisation vs RevIN, newest-token vs mean pooling.

Each variant is solved to the same parameter budget (the smallest HPO budget) and trained
with the ``train`` defaults on the same splits and seeds; the table gives validation AUC
(mean and spread over seeds) and seconds per epoch. The default (first row) should be the
cheaper choice wherever it is not worse (issue 3).
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks._common import data_spec, describe_data, in_child, load_data, machine
from benchmarks._common import threads as bench_threads

NAME = "model_variants"
TITLE = "Model variants: patching, normalisation, pooling"

VARIANTS: dict[str, dict[str, Any]] = {
    "default: channel-mixing, global, last token": {},
    "channel-independent patches": {"channel_independent": True},
    "RevIN (per-window normalisation)": {"norm": "revin"},
    "mean pooling": {"pooling": "mean"},
}


def variant_child(overrides: dict[str, Any], budget: str, spec: dict[str, Any], seed: int, max_epochs: int,
                  threads: int) -> dict[str, Any]:
    import dataclasses

    import torch

    from common import config
    from training.budget import ModelParams, count_params
    from training.trainer import TrainConfig, train

    torch.set_num_threads(threads)
    data = load_data(spec)
    params = config.load_params()
    model = dataclasses.replace(config.build(ModelParams, params.get("model") or {}, where="model"), **overrides)
    cfg = model.solve(budget, data.n_features, data.context_len)
    if cfg is None:
        raise RuntimeError(f"variant {overrides} is infeasible at {budget}")
    base = TrainConfig.from_dict({k: v for k, v in (params.get("train") or {}).items()})
    tcfg = dataclasses.replace(base, max_epochs=max_epochs, patience=max_epochs, seed=seed, progress=False)
    result = train(cfg, tcfg, data)
    seconds = sum(h["epoch_seconds"] for h in result.history) / max(1, len(result.history))
    return {"auc": result.val_metrics.get("val/auc", float("nan")), "best_epoch": result.best_epoch,
            "epoch_seconds": seconds, "n_params": count_params(cfg), "d_model": cfg.d_model,
            "tokens": cfg.n_tokens}


def run(quick: bool = False) -> str:
    from common import config

    threads = bench_threads()
    spec = data_spec()
    data = load_data(spec)
    budgets = (config.load_params().get("hpo") or {}).get("budgets") or ["20K"]
    budget = budgets[0]
    seeds = [0] if quick else [0, 1]
    max_epochs = 2 if quick else 5
    where = machine()
    rows = []
    for label, overrides in VARIANTS.items():
        runs = [in_child(variant_child, overrides=overrides, budget=budget, spec=spec, seed=s,
                         max_epochs=max_epochs, threads=threads) for s in seeds]
        aucs = [r["auc"] for r in runs]
        rows.append((label, runs[0], statistics.mean(aucs), statistics.pstdev(aucs),
                     statistics.median(r["epoch_seconds"] for r in runs)))
    default_seconds, default_auc = rows[0][4], rows[0][2]
    lines = [
        f"Machine: {where}; {threads} torch threads.",
        f"Data: {describe_data(spec, data)}. Budget {budget} (width re-solved per variant), `train` defaults "
        f"with {max_epochs} epochs and no early stop, seeds {seeds}; best-epoch validation AUC.",
        "",
        "| variant | real params | d_model | tokens per window | val AUC mean (sd) | s / epoch | cost vs default |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, first, mean, sd, seconds in rows:
        lines.append(f"| {label} | {first['n_params']:,} | {first['d_model']} | {first['tokens']} | "
                     f"{mean:.3f} ({sd:.3f}) | {seconds:.2f} | {seconds / default_seconds:.1f}x |")
    better = [f"{label} (+{mean - default_auc:.3f} AUC at {seconds / default_seconds:.1f}x the cost)"
              for label, _, mean, sd, seconds in rows[1:] if mean > default_auc + max(sd, rows[0][3])]
    lines += ["", "Verdict: " + (
        "no variant beats the default by more than the seed spread, so the default stays the cheapest "
        "choice that is not worse." if not better else
        f"beating the default by more than the seed spread: {'; '.join(better)}. Weigh the gain against the "
        "cost before changing the defaults in params.yaml.")]
    if quick:
        lines += ["", "_Quick run (`--quick`): one seed, two epochs; rerun without it for the record._"]
    return "\n".join(lines)
