"""Seconds per HPO trial at each budget of ``hpo.budgets``, with the ``train`` defaults.

One trial = ``training.trainer.train`` with early stopping (what the HPO runs per trial),
on the real tier, with all cores. Two structures per budget: the ``model`` defaults and the
most expensive corner of ``hpo.space`` (deepest, shortest patches, most heads, widest FFN),
which bounds what a study can cost. This is the input for sizing the CPU profile (issue 7).
"""

from __future__ import annotations

from typing import Any

from benchmarks._common import data_spec, describe_data, in_child, load_data, machine
from benchmarks._common import threads as bench_threads

NAME = "trial_cost"
TITLE = "Seconds per HPO trial at the CPU budgets"


def heaviest(space: dict[str, Any]) -> dict[str, Any]:
    """The costliest corner of the search space's structural parameters."""
    corner: dict[str, Any] = {}
    for name, pick in (("n_layers", max), ("n_heads", max), ("d_ff_ratio", max), ("patch_len", min)):
        spec = space.get(name)
        if not spec:
            continue
        values = spec.get("choices") or [spec.get("low"), spec.get("high")]
        corner[name] = pick(v for v in values if v is not None)
    return corner


def trial_child(budget: str, searched: dict[str, Any], spec: dict[str, Any], threads: int) -> dict[str, Any]:
    import time

    import torch

    from common import config
    from training.budget import ModelParams, count_params
    from training.trainer import TrainConfig, train

    torch.set_num_threads(threads)
    data = load_data(spec)
    params = config.load_params()
    model = config.build(ModelParams, params.get("model") or {}, where="model")
    cfg = model.solve(budget, data.n_features, data.context_len, **searched)
    if cfg is None:
        return {"feasible": False}
    tcfg = TrainConfig.from_dict({**(params.get("train") or {}), "progress": False})
    started = time.perf_counter()
    result = train(cfg, tcfg, data)
    return {"feasible": True, "seconds": time.perf_counter() - started, "epochs": result.epochs_run,
            "status": result.status, "auc": result.val_metrics.get("val/auc", float("nan")),
            "n_params": count_params(cfg), "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "patch_len": cfg.patch_len, "max_epochs": tcfg.max_epochs}


def run(quick: bool = False) -> str:
    from common import config
    from training.budget import parse_budget

    threads = bench_threads()
    spec = data_spec()
    data = load_data(spec)
    params = config.load_params()
    hpo = params.get("hpo") or {}
    budgets = sorted(hpo.get("budgets") or ["20K", "60K", "200K"], key=parse_budget)
    structures = {"model defaults": {}}
    if not quick:
        structures["heaviest corner of hpo.space"] = heaviest(hpo.get("space") or {})
    where = machine()
    lines = [
        f"Machine: {where}; {threads} torch threads.",
        f"Data: {describe_data(spec, data)}. `train` defaults from params.yaml (early stopping on), "
        "one trial per cell, timed from start to end of `train()`.",
        "",
        "| budget | structure | real params | d_model x layers, patch | epochs run | seconds / trial | s / epoch "
        "| val AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget in budgets:
        for label, searched in structures.items():
            r = in_child(trial_child, budget=budget, searched=searched, spec=spec, threads=threads)
            if not r["feasible"]:
                lines.append(f"| {budget} | {label} {searched} | infeasible | | | | | |")
                continue
            lines.append(
                f"| {budget} | {label} | {r['n_params']:,} | {r['d_model']} x {r['n_layers']}, {r['patch_len']} "
                f"| {r['epochs']} / {r['max_epochs']} ({r['status']}) | {r['seconds']:.1f} "
                f"| {r['seconds'] / max(1, r['epochs']):.2f} | {r['auc']:.3f} |"
            )
    if quick:
        lines += ["", "_Quick run (`--quick`): model defaults only._"]
    return "\n".join(lines)
