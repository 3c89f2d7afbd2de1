"""A finished tiny grid (tiers x budgets, horizon 1) in the documented results/ layout, for the
report tests: each study as its HPO stage's declared outputs (best.json + study.json, or only
trials.csv as before study.json existed), promote / baselines / cross-budget / cross-tier files, and the select
stage's verdicts.json. No Optuna store and no MLflow run is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import optuna.distributions as od
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from scipy import stats as st

from common import paths
from evaluation import plots
from training.search.results import trial_rows
from training.selection_record import BaselineCell, Cell, Gate, Interval, SelectionRecord, Verdict, VsBaseline

H = 1
TIERS = ("a20", "a50")
BUDGETS = {"2K": 2_050, "20K": 19_800, "200K": 201_300}  # 200K sorts before 20K alphabetically: it must not
SPACE = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "depth": IntDistribution(1, 4),
    "batch_size": CategoricalDistribution([32, 64, 128]),
}
N_TEST = 300
TEST_AUCS = {"2K": 0.58, "20K": 0.74, "200K": 0.90}  # clearly monotonic

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(rng: np.random.Generator) -> optuna.Study:
    """Trials as the HPO engine leaves them: forced then TPE/coverage phases, one failed, one pruned
    late, one degenerate, one void; the coverage snapshot says depth 4 with batch size 128 is
    unreachable. In memory only."""
    study = optuna.create_study(direction="maximize")
    for i in range(11):
        trial = study.ask(SPACE)
        trial.set_user_attr("phase", "forced" if i < 3 else ("coverage" if i == 8 else "tpe"))
        if i == 10:  # claimed by a worker and given back unrun: counted nowhere
            trial.set_user_attr("void", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        for epoch in range(3):
            trial.report(0.55 + 0.01 * epoch + 0.002 * i, epoch)
        trial.set_user_attr("info", {"epochs": 3, "timing": {"total_s": 2.0 + i}})
        if i == 5:
            trial.set_user_attr("fail_reason", "RuntimeError: NaN loss at epoch 2")
            study.tell(trial, state=TrialState.FAIL)
        elif i == 7:
            trial.set_user_attr("wasted", "late_pruned")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("wasted", "degenerate" if i == 2 else None)
            value = 0.62 - 0.02 * abs(np.log10(trial.params["lr"]) + 3.5) + 0.003 * i + rng.normal(0, 0.002)
            study.tell(trial, float(value) + (0.05 if i == 2 else 0.0))  # the degenerate one never wins
    axes = {name: {"params": [name], "shape": [n], "occupied": [], "empty": [[b] for b in range(n)]}
            for name, n in (("lr", 5), ("dropout", 5), ("depth", 4), ("batch_size", 3))}
    axes["depth.batch_size"] = {"params": ["depth", "batch_size"], "shape": [4, 3], "occupied": [],
                                "empty": [[i, j] for i in range(4) for j in range(3) if (i, j) != (3, 2)]}
    study.set_user_attr("coverage", {"overall": 0.8, "n_points": 9, "axes": axes})
    return study


def study_json(study: optuna.Study, name: str) -> dict:
    """``study.json`` as the StudyOutputs contract (CONTRACTS.md, "Study outputs") defines it."""
    dists: dict[str, str] = {}
    for t in study.trials:
        dists.update({k: od.distribution_to_json(d) for k, d in t.distributions.items()})
    return {"study_name": name, "direction": "maximize", "metric_names": ["val/auc"], "distributions": dists,
            "user_attrs": study.user_attrs,
            "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                        "user_attrs": t.user_attrs, "intermediate_values": t.intermediate_values}
                       for t in study.trials]}


def scores_for(auc: float, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logit = np.sqrt(2) * st.norm.ppf(auc) * y + rng.standard_normal(len(y)) - 0.5
    return 1 / (1 + np.exp(-logit))


def promote_summary(tier: str, study_name: str, budget: str) -> dict:
    def metrics(ece: float) -> dict:
        return {"test/auc": 0.7, "test/ece": ece, "test/brier": 0.2 + ece / 10, "test/log_loss": 0.6 + ece}

    return {
        "tier": tier, "horizon": H, "budget": budget, "n_params": BUDGETS[budget], "study_name": study_name,
        "calibrator": {"method": "sigmoid", "reason": "lowest blocked-CV log loss on validation"},
        "calibrator_reason": "lowest blocked-CV log loss on validation", "degenerate": None,
        "test": {"uncalibrated": metrics(0.08), "calibrated": metrics(0.03), "auc_ci": {},
                 "ece": "L1 ECE of the positive-class probability, equal-width bins (evaluation.metrics)"},
        "registry": {"name": f"tierhpo-SYN-{tier}-h{H}-{budget}", "version": 1, "alias": None,
                     "decision": "kept without alias: not better than the champion on val/auc"},
    }


def build_tier(tier: str, test_aucs: dict[str, float], rng: np.random.Generator, *, with_study_json: bool,
               y: np.ndarray, dates: pd.DatetimeIndex) -> None:
    for budget, n_params in BUDGETS.items():
        study = make_study(rng)
        name = f"{tier}-{budget}-h{H}-0123abcd"
        best = max((t for t in study.trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("wasted")),
                   key=lambda t: t.value)
        out = paths.study_dir(tier, budget, H)
        out.mkdir(parents=True)
        (out / "best.json").write_text(json.dumps({
            "study_name": name, "tier": tier, "budget": budget, "symbol": "SYN",
            "budget_params": int(budget[:-1]) * 1000, "horizon": H, "seed": 0, "trial_number": best.number,
            "mlflow_run_id": "r", "parent_run_id": "p", "experiment_id": "404", "params": best.params,
            "model_config": {}, "train_config": {}, "n_params": n_params, "metrics": {"val/auc": best.value},
            "raw_version": "d", "git_commit": "g"}))
        pd.DataFrame(trial_rows(study.trials)).to_csv(out / "trials.csv", index=False)
        if with_study_json:
            (out / "study.json").write_text(json.dumps(study_json(study, name)))
        p_raw = scores_for(test_aucs[budget], y, rng)
        promo = paths.promote_dir(tier, H) / budget
        promo.mkdir(parents=True)
        pd.DataFrame({"date": dates, "y": y, "p_raw": p_raw, "p_cal": np.clip(p_raw * 0.9 + 0.03, 0, 1)}
                     ).to_parquet(promo / "predictions.parquet")
        (promo / "summary.json").write_text(json.dumps(promote_summary(tier, name, budget)))
    base = paths.baselines_dir(tier, H)
    base.mkdir(parents=True)
    frames = [pd.DataFrame({"date": dates, "split": "test", "y": y, "vol": scores_for(0.6, y, rng),
                            "logreg": scores_for(0.58, y, rng), "hgb": scores_for(0.57, y, rng)}),
              pd.DataFrame({"date": pd.bdate_range("2019-01-01", periods=50), "split": "val",
                            "y": rng.integers(0, 2, 50), "vol": rng.random(50), "logreg": rng.random(50),
                            "hgb": rng.random(50)})]
    pd.concat(frames).to_parquet(base / "predictions.parquet")
    (base / "metrics.json").write_text(json.dumps({n: {"val/auc": 0.57, "test/auc": 0.58}
                                                   for n in ("vol", "logreg", "hgb")}))
    cross = paths.cross_budget_dir(tier, H)
    cross.mkdir(parents=True)
    names = list(BUDGETS)
    mean = [[0.60 + 0.01 * i - 0.005 * abs(i - j) for j in range(3)] for i in range(3)]
    mean[2][0] = None  # the 200K structure is infeasible at 2K
    std = [[None if m is None else 0.004 for m in row] for row in mean]
    (cross / "matrix.json").write_text(json.dumps({
        "tier": tier, "horizon": H, "metric": "val/auc", "budgets": names, "mean": mean, "std": std, "n_seeds": 3,
        "noise_rule": "off-diagonal within noise when |mean(s,t) - mean(t,t)| <= max(2 x std(t,t), 0.002)",
        "studies": {b: {"study_name": f"{tier}-{b}-h{H}-0123abcd", "trial_number": 0} for b in names},
        "transfer": {b: {"transfers": True, "summary": "transfers (within noise at ['20K'], better at -)"}
                     for b in names}}))
    plots.heatmap([[np.nan if v is None else v for v in row] for row in mean], names, names, cross / "heatmap.png")


def build_cross_tier(budget: str) -> None:
    """``results/cross_tier/<budget>/h1/matrix.json`` as the cross-tier stage writes it: a20's
    hyperparameters transfer to a50; a50's 200K structure is infeasible on a20."""
    cells, tiers = [], list(TIERS)
    for s in tiers:
        for t in tiers:
            feasible = not (budget == "200K" and (s, t) == ("a50", "a20"))
            mean = (0.62 if s == t else 0.615 if s == "a20" else 0.58) if feasible else None
            cells.append({"source": s, "target": t, "feasible": feasible, "mean": mean,
                          "std": 0.004 if feasible else None, "n": 3 if feasible else 0,
                          "verdict": ("diagonal" if s == t else "within noise" if s == "a20" else "worse")
                          if feasible else "infeasible",
                          **({} if feasible else {"reason": "no d_model puts n_layers=4 with 20 input features "
                                                            "within 10% of 200K"})})
    transfer = {"a20": {"transfers": True, "summary": "transfers (within noise at ['a50'], better at -)"},
                "a50": {"transfers": None if budget == "200K" else False, "summary": "..."}}
    out = paths.cross_tier_dir(budget, H)
    out.mkdir(parents=True)
    (out / "matrix.json").write_text(json.dumps({
        "budget": budget, "horizon": H, "metric": "val/auc", "tiers": tiers, "n_seeds": 3, "alpha": 0.05,
        "studies": {t: {"study_name": f"{t}-{budget}-h{H}-0123abcd", "trial_number": 0} for t in tiers},
        "cells": cells, "transfer": transfer}))


def selection_record(*, gate_passed: bool = False) -> SelectionRecord:
    """verdicts.json as the select stage writes it: a50/200K best, beats vol, not logreg/hgb."""
    cells = []
    for t, tier in enumerate(TIERS):
        for b, (budget, n) in enumerate(BUDGETS.items()):
            est = 0.60 + 0.05 * b + 0.01 * t
            cells.append(Cell(tier, budget, n, val_auc=0.70 + 0.01 * b + 0.005 * t,
                              test=Interval(est, est - 0.03, est + 0.03), in_mcs=b == 2, seed_sd_val=0.011))
    return SelectionRecord(
        horizon=H, symbol="SYN", alpha=0.05, adjustment="holm", block_length=1.6, n_test_days=N_TEST, n_seeds=3,
        base_rates={"train": 0.247, "val": 0.159, "test": 0.116}, tiers=list(TIERS), budgets=list(BUDGETS),
        cells=cells,
        baselines={"vol": BaselineCell(0.70, Interval(0.68, 0.64, 0.72)),
                   "logreg": BaselineCell(0.79, Interval(0.71, 0.67, 0.75)),
                   "hgb": BaselineCell(0.72, Interval(0.70, 0.66, 0.74))},
        best={"tier": "a50", "budget": "200K"},
        vs_baselines=[VsBaseline("vol", "two-level bootstrap, paired AUC difference",
                                 Interval(0.030, 0.004, 0.056, 0.004, 0.012)),
                      VsBaseline("logreg", "two-level bootstrap, paired AUC difference",
                                 Interval(0.001, -0.02, 0.022, 0.9, 0.9)),
                      VsBaseline("hgb", "two-level bootstrap, paired AUC difference",
                                 Interval(0.010, -0.012, 0.032, 0.3, 0.6))],
        budget_verdicts={"a20": Verdict("monotonic"), "a50": Verdict("inconclusive")},
        tier_verdicts={"2K": Verdict("inconclusive"), "20K": Verdict("more features help"),
                       "200K": Verdict("inconclusive")},
        mcs={"alpha": 0.1, "members": ["a20/200K", "a50/200K"]},
        gate=Gate(gate_passed, "SPA on validation over 22 trials does not reject the best baseline", 0.41, "logreg"),
        trial_spread_val={"a50/200K": 0.004, "a20/200K": 0.003},
    )


def build_grid(*, seed: int = 0, with_select: bool = True) -> SelectionRecord:
    """The whole grid under the current root: a50 with study.json, a20 with trials.csv only."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=N_TEST)
    y = (rng.random(N_TEST) < 0.45).astype(int)
    for tier in TIERS:
        build_tier(tier, TEST_AUCS, rng, with_study_json=tier == "a50", y=y, dates=dates)
    for budget in BUDGETS:
        build_cross_tier(budget)
    rec = selection_record()
    if with_select:
        rec.write(paths.results_dir() / "select" / f"h{H}")
    return rec


def write_params(root: Path, repo: Path) -> None:
    """``repo``'s params.yaml, shrunk (tests/shrink.py), with every tier and 400 bootstrap resamples."""
    import yaml
    from shrink import shrink

    root.mkdir(parents=True, exist_ok=True)
    params = shrink(yaml.safe_load((repo / "params.yaml").read_text()), data={"tiers": ["a20", "a50", "a100"]},
                    report={"bootstrap_reps": 400, "tiers": []})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
