"""Models x samples per second: the batched trainer vs the single-model trainer vs the naive loop.

The issue-14 table: K = 1, 4, 8, 16 models of the default structure (``model`` section, width
solved per budget) at 20K, 60K, 200K and 2M parameters, side by side in one run, each mode in
fresh spawned processes (the clock covers training only, after a barrier; the processes of
:func:`benchmarks.batched.run_mode`):

* ``ref``: the naive reference loop of :mod:`benchmarks.throughput`, K models one after another, 2 threads;
* ``single``: ``training.trainer.train``, K models one after another, 2 threads;
* ``batch``: one ``training.batched.train_batch`` of K members, 2 threads;
* ``2w single``: two 1-thread processes, each training its half with ``trainer.train``;
* ``2w batch``: two 1-thread processes, each one ``train_batch`` of its half.

Early stopping is off (patience = epochs), so every mode does the same work. Reported per cell:
models x training samples per second, the ratio to ``single`` (issue 14's target: >= 1.8x at
20K-200K on 2 cores, no slower at 2M) and the peak RSS (summed over a mode's processes).

``python -m benchmarks batch_k --quick`` (20K and 60K, K = 1, 4, 8, 1 epoch on 2,048 training
windows: a few minutes on 2 cores); ``python -m benchmarks batch_k`` for the whole table, or
``python -m benchmarks.batch_k --budgets 20K --ks 1 4 --epochs 1 --max-train 512`` for a chosen part.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks._common import data_spec, describe_data, load_data, machine
from benchmarks.batched import _loadavg, run_mode

NAME = "batch_k"
TITLE = "Models x samples/s: batched trainer vs single-model trainer vs naive loop, K = 1-16"
BUDGETS = ("20K", "60K", "200K", "2M")
KS = (1, 4, 8, 16)
MODES = {"r": "ref", "b": "single", "c": "batch", "d": "2w single", "e": "2w batch"}
TARGET_SMALL, TARGET_LARGE = 1.8, 1.0


def measure(budgets: tuple[str, ...], ks: tuple[int, ...], epochs: int, max_train: int | None,
            modes: tuple[str, ...] = tuple(MODES)) -> dict[str, Any]:
    spec = data_spec("a50", 1)
    data = load_data(spec)
    load_before, cells = _loadavg(), []
    for budget in budgets:
        for k in ks:
            res = {}
            for m in modes:
                res[m] = run_mode(m, budget, spec, k, epochs, max_train=max_train)
                print(f"batch_k: {budget} K={k} {MODES[m]}: {res[m]['wall_s']:.1f} s, "
                      f"{res[m]['peak_rss_mb']:.0f} MB (load {_loadavg().split()[0]})", file=sys.stderr, flush=True)
            cells.append((budget, k, res))
    return {"cells": cells, "data": describe_data(spec, data), "load": (load_before, _loadavg()), "epochs": epochs,
            "max_train": max_train, "modes": modes}


def render(out: dict[str, Any], quick: bool) -> str:
    modes, cap = out["modes"], out["max_train"]
    lines = [
        f"Machine: {machine()}; `cat /proc/loadavg` before `{out['load'][0]}`, after `{out['load'][1]}`.",
        f"Data: {out['data']}; {out['epochs']} epoch(s), no early stopping"
        f"{f', the last {cap:,} training windows' if cap else ''}"
        f"{' (`--quick`)' if quick else ''}. Models x samples/s = K x training windows x epochs / wall s "
        "(training only, after a barrier; fresh processes per mode). Ratio: to `single` (2 threads).",
        "",
        "| budget (params) | K | " + " | ".join(f"{MODES[m]} models x samples/s" for m in modes)
        + " | " + " | ".join(f"{MODES[m]} / single" for m in modes if m != "b")
        + " | peak RSS MB " + " / ".join(MODES[m] for m in modes) + " |",
        "|---|---:|" + "---:|" * (len(modes) + len([m for m in modes if m != "b"]) + 1),
    ]
    verdicts, notes = [], []
    for budget, k, res in out["cells"]:
        base = res["b"]["model_samples_per_s"] if "b" in res else float("nan")
        ratios = {m: res[m]["model_samples_per_s"] / base for m in modes if m != "b"}
        lines.append(
            f"| {budget} ({res[modes[0]]['n_params']:,}) | {k} | "
            + " | ".join(f"{res[m]['model_samples_per_s']:,.0f}" for m in modes) + " | "
            + " | ".join(f"{ratios[m]:.2f}x" for m in ratios) + " | "
            + " / ".join(f"{res[m]['peak_rss_mb']:.0f}" for m in modes) + " |")
        for m in modes:
            if res[m]["ok"] != k:
                notes.append(f"{budget} K={k} {MODES[m]}: only {res[m]['ok']}/{k} models finished ok")
        if "b" in res and "c" in res:
            gap = max(abs(x - y) for x, y in zip(res["b"]["auc"], res["c"]["auc"], strict=True)
                      if x is not None and y is not None)
            notes.append(f"{budget} K={k}: largest |val AUC single - batch| {gap:.2e}")
            if k > 1:
                best = max(ratios.get(m, 0.0) for m in ("c", "d", "e"))
                target = TARGET_LARGE if budget == "2M" else TARGET_SMALL
                verdicts.append(f"- {budget} K={k}: best of batch / 2 workers = {best:.2f}x single "
                                f"(target >= {target:g}x): **{'met' if best >= target else 'NOT met'}**")
    lines += ["", "Targets (issue 14):", *verdicts, "", *[f"- {n}" for n in notes]]
    if quick:
        lines += ["", "_Quick run (`--quick`): two budgets, K <= 8, one short epoch; rerun without it for the record._"]
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str:
    if quick:
        return render(measure(("20K", "60K"), (1, 4, 8), 1, 2048), quick=True)
    return render(measure(BUDGETS, KS, 2, None), quick=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS))
    parser.add_argument("--ks", nargs="+", type=int, default=list(KS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=None, help="cap on training windows (shorter epochs)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args(argv)
    print(render(measure(tuple(args.budgets), tuple(args.ks), args.epochs, args.max_train, tuple(args.modes)),
                 quick=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
