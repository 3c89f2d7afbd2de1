"""The grid's answer, worded from the select stage's record (``training.selection_record``).

Nothing is re-tested here: every interval, p-value and verdict comes from ``verdicts.json``, so
the summary's sentences, its table and ``reports/metrics.json`` cannot disagree with the
registry's decision. A reading ("beats", "is beaten by", "within noise") uses the same adjusted
interval and p-value that are printed beside it.
"""

from __future__ import annotations

from typing import Any

from pipelines.report.params import BASELINE_NAMES, BUDGET_VERDICT_CODE, TIER_VERDICT_CODE
from training.selection_record import Interval, SelectionRecord

SPLIT_ORDER = ("train", "val", "test")


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def reading(diff: Interval, alpha: float) -> str:
    """``beats`` / ``is beaten by`` / ``does not beat``, from the adjusted interval and p-value together."""
    p = diff.p_adjusted if diff.p_adjusted is not None else diff.p_value
    significant = p is not None and p < alpha
    if significant and diff.low > 0:
        return "beats"
    if significant and diff.high < 0:
        return "is beaten by"
    return "does not beat"


def seed_noise(rec: SelectionRecord) -> dict[str, Any]:
    """Largest seed-to-seed sd of val AUC against the largest spread of the top trials."""
    seed_sd = max((c.seed_sd_val for c in rec.cells if c.seed_sd_val is not None), default=None)
    spread = max(rec.trial_spread_val.values(), default=None)
    exceeds = None if seed_sd is None or spread is None else bool(seed_sd >= spread)
    return {"seed_sd_val": seed_sd, "trial_spread_val": spread, "exceeds": exceeds}


def answer(rec: SelectionRecord) -> dict[str, Any]:
    """The data behind the summary's opening sentences (JSON-ready)."""
    best = rec.best_cell
    versus = [{"baseline": v.baseline, "name": BASELINE_NAMES.get(v.baseline, v.baseline), "test": v.test,
               "diff": vars(v.diff), "reading": reading(v.diff, rec.alpha)} for v in rec.vs_baselines]
    return {
        "horizon": rec.horizon, "symbol": rec.symbol, "alpha": rec.alpha, "adjustment": rec.adjustment,
        "best": {"tier": best.tier, "budget": best.budget, "n_params": best.n_params, "val_auc": best.val_auc,
                 "test": vars(best.test)},
        "versus": versus,
        "beats_all": bool(versus) and all(v["reading"] == "beats" for v in versus),
        "gate": vars(rec.gate),
        "budget_verdicts": {t: rec.budget_verdicts[t].verdict for t in rec.tiers if t in rec.budget_verdicts},
        "tier_verdicts": {b: rec.tier_verdicts[b].verdict for b in rec.budgets if b in rec.tier_verdicts},
        "mcs": list(rec.mcs.get("members", [])), "mcs_alpha": rec.mcs.get("alpha", rec.alpha),
        "base_rates": {k: rec.base_rates[k] for k in sorted(rec.base_rates, key=_split_key)},
        "val_test_gap": best.test.estimate - best.val_auc,
        "seed_noise": seed_noise(rec),
        "n_test_days": rec.n_test_days, "n_seeds": rec.n_seeds, "block_length": rec.block_length,
    }


def table(rec: SelectionRecord) -> dict[str, Any]:
    """Tier x budget test AUC with interval and MCS membership; baselines as extra rows."""
    rows = []
    for tier in rec.tiers:
        cells = []
        for budget in rec.budgets:
            c = rec.cell(tier, budget)
            cells.append(None if c is None else {"test": vars(c.test), "in_mcs": c.in_mcs, "val_auc": c.val_auc,
                                                 "best": c.key == rec.best_cell.key})
        rows.append({"tier": tier, "cells": cells, "verdict": rec.budget_verdicts.get(tier).verdict
                     if tier in rec.budget_verdicts else None})
    baselines = [{"name": BASELINE_NAMES.get(n, n), "key": n, "val_auc": b.val_auc, "test": vars(b.test)}
                 for n, b in rec.baselines.items()]
    return {"budgets": rec.budgets, "rows": rows, "baselines": baselines,
            "tier_verdicts": [rec.tier_verdicts[b].verdict if b in rec.tier_verdicts else None for b in rec.budgets]}


def headline(records: list[SelectionRecord]) -> dict[str, Any]:
    """``reports/metrics.json``: a few numbers per horizon, flat enough for one `dvc metrics show` table."""
    out: dict[str, Any] = {}
    for rec in records:
        best = rec.best_cell
        block: dict[str, Any] = {
            "best_test_auc": best.test.estimate, "best_val_auc": best.val_auc,
            "champion": int(rec.gate.passed), "mcs_size": len(rec.mcs.get("members", [])),
        }
        for v in rec.vs_baselines:
            block[f"minus_{v.baseline}"] = v.diff.estimate
            block[f"p_{v.baseline}"] = v.diff.p_adjusted if v.diff.p_adjusted is not None else v.diff.p_value
        for tier in rec.tiers:
            if tier in rec.budget_verdicts:
                block[f"scaling_{tier}"] = BUDGET_VERDICT_CODE[rec.budget_verdicts[tier].verdict]
        for budget in rec.budgets:
            if budget in rec.tier_verdicts:
                block[f"tiers_{budget}"] = TIER_VERDICT_CODE[rec.tier_verdicts[budget].verdict]
        block["test_auc"] = {c.key.replace("/", "_"): c.test.estimate for tier in rec.tiers for budget in rec.budgets
                             if (c := rec.cell(tier, budget)) is not None}
        out[f"h{rec.horizon}"] = block
    return out


def mlflow_metrics(head: dict[str, Any]) -> dict[str, float]:
    """Headline numbers as MLflow keys: ``test/auc_best_h1``, ``test/auc_h1_a50_20K``, ``select/champion_h1``."""
    out: dict[str, float] = {}
    for h, block in head.items():
        for key, value in block.items():
            if key == "test_auc":
                out.update({f"test/auc_{h}_{cell}": float(v) for cell, v in value.items()})
            elif value is not None:
                split = {"best_test_auc": "test/auc_best", "best_val_auc": "val/auc_best"}.get(key, f"select/{key}")
                out[f"{split}_{h}"] = float(value)
    return out


def transfer_table(matrix: dict[str, Any]) -> dict[str, Any]:
    """The cross-tier matrix of one budget as rows (source tier) x columns (target tier): mean val
    AUC ± sd over the fresh seeds with the verdict against the target's diagonal, or why not."""
    tiers = list(matrix["tiers"])
    by = {(c["source"], c["target"]): c for c in matrix["cells"]}
    rows = []
    for s in tiers:
        texts = []
        for t in tiers:
            c = by.get((s, t))
            if c is None:
                texts.append("n/a")
            elif c["verdict"] == "infeasible":
                texts.append(f"infeasible: {c.get('reason') or 'no width within the budget tolerance'}")
            elif c["verdict"] == "failed" or c.get("mean") is None:
                texts.append("failed")
            else:
                verdict = "own" if c["verdict"] == "diagonal" else c["verdict"]
                texts.append(f"{c['mean']:.3f} ± {c.get('std') or 0.0:.3f} ({verdict})")
        flag = (matrix["transfer"].get(s) or {}).get("transfers")
        rows.append([s, *texts, "inconclusive" if flag is None else "yes" if flag else "no"])
    return {"budget": matrix.get("budget"), "tiers": tiers, "rows": rows, "n_seeds": matrix.get("n_seeds"),
            "alpha": matrix.get("alpha")}
