"""Every cell's and baseline's scores on the same days: the select stage's input, read from declared deps.

A cell is one study (tier x budget at one horizon). Its scores are the refit seeds of the study's
selected configuration (``refit.json`` + ``refit.pt``, written by ``tierhpo hpo``): fresh seeds,
so the comparison is not biased towards the seed that won the search. Each seed's logits on
validation and test are calibrated by a Platt map fitted on *validation only* (monotone, so AUCs
are unchanged; the log losses that the MCS and SPA compare need probabilities). Baselines come
from each tier's ``predictions.parquet``.

Tiers drop different warm-up rows, so their splits can start on different days: every score is
aligned on the days common to all cells and baselines, and the labels on those days must agree
(they are computed from the same prices), else the inputs are stale and the stage stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import paths
from common.errors import TierHpoError
from training import baseline_record
from training.budget import parse_budget

SPLITS = ("val", "test")
TOP_TRIALS = 5  # the spread of the best trials' val AUC, against the seed sd (issue: seed luck)


@dataclass
class Scores:
    """One model's days of one split: dates (n,), labels (n,) and probabilities (S, n)."""

    dates: np.ndarray
    y: np.ndarray
    p: np.ndarray


@dataclass
class CellScores:
    tier: str
    budget: str
    n_params: int
    study_name: str
    splits: dict[str, Scores]
    seed_val_aucs: list[float] = field(default_factory=list)
    n_trials: int = 0
    trial_spread_val: float | None = None

    @property
    def key(self) -> str:
        return f"{self.tier}/{self.budget}"


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise TierHpoError(f"{path} is missing; {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TierHpoError(f"{path} is not valid JSON ({exc.msg}); {hint}") from None


def trial_summary(trials_csv: Path) -> tuple[int, float | None]:
    """(finished trials, sd of the top-5 COMPLETE trials' val AUC) from the study's ``trials.csv``."""
    if not trials_csv.is_file():
        return 0, None
    frame = pd.read_csv(trials_csv)
    done = frame[frame["state"] == "COMPLETE"]["value"].dropna().sort_values(ascending=False)
    top = done.head(TOP_TRIALS)
    return len(frame), (float(top.std(ddof=1)) if len(top) > 1 else None)


def load_cell(tier: str, budget: str, horizon: int, data: Any) -> CellScores:
    """The refit seeds of one study, predicted on val and test and calibrated on val."""
    import torch

    from evaluation.auc import rank_auc
    from evaluation.calibration import fit_calibrator
    from training.inference import predict_logits
    from training.model import ModelConfig

    directory = paths.study_dir(tier, budget, horizon)
    hint = f"run: tierhpo hpo --tier {tier} --budget {budget} --horizon {horizon}"
    best = _read_json(directory / "best.json", hint)
    refit = _read_json(directory / "refit.json", hint + " (with hpo.refit_seeds >= 2)")
    if len(refit.get("seeds") or []) < 2:
        raise TierHpoError(f"{directory / 'refit.json'} has fewer than 2 seeds; set hpo.refit_seeds >= 2 and {hint}")
    try:
        states = torch.load(directory / "refit.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise TierHpoError(f"{directory / 'refit.pt'} cannot be read ({str(exc).splitlines()[0][:80]}); {hint}") from None
    model_cfg = ModelConfig.from_dict(refit["model_config"])
    per_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    seed_aucs = []
    y_val = data.labels_of("val")
    for seed in refit["seeds"]:
        state = states.get(f"seed_{seed}")
        if state is None:
            raise TierHpoError(f"{directory / 'refit.pt'} lacks seed {seed} of refit.json; {hint}")
        logits = {s: predict_logits(model_cfg, state, data, s) for s in SPLITS}
        calibrator = fit_calibrator(logits["val"], y_val, "sigmoid")  # validation only
        for s in SPLITS:
            per_split[s].append(calibrator.apply(logits[s]))
        seed_aucs.append(float(rank_auc(y_val, logits["val"])))
    splits = {s: Scores(data.dates[data.split_ends[s]].astype("datetime64[D]"), data.labels_of(s).astype(np.int64),
                        np.stack(per_split[s])) for s in SPLITS}
    n_trials, spread = trial_summary(directory / "trials.csv")
    return CellScores(tier, budget, int(best.get("n_params") or parse_budget(budget)), str(best.get("study_name", "")),
                      splits, seed_aucs, n_trials, spread)


def load_baselines(tier: str, horizon: int) -> dict[str, dict[str, Scores]]:
    """``{name: {split: Scores}}`` of the tier's baselines (one "seed": they are deterministic fits)."""
    frame = baseline_record.read_predictions(tier, horizon)
    out: dict[str, dict[str, Scores]] = {}
    for name in baseline_record.NAMES:
        out[name] = {}
        for s in SPLITS:
            part = frame[frame["split"] == s]
            out[name][s] = Scores(part["date"].to_numpy().astype("datetime64[D]"), part["y"].to_numpy(np.int64),
                                  part[name].to_numpy(np.float64)[None, :])
    return out


def common_days(models: list[dict[str, Scores]], split: str) -> np.ndarray:
    """The dates every model scored in ``split``, sorted."""
    days = None
    for m in models:
        d = np.unique(m[split].dates)
        days = d if days is None else np.intersect1d(days, d)
    if days is None or len(days) == 0:
        raise TierHpoError(f"the cells and baselines share no {split} day; rebuild the tiers and rerun the stages")
    return days


def align(scores: Scores, days: np.ndarray, y: np.ndarray | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels on ``days``, probabilities (S, len(days))); labels must match ``y`` when given."""
    pos = np.searchsorted(scores.dates, days)
    if np.any(pos >= len(scores.dates)) or np.any(scores.dates[np.minimum(pos, len(scores.dates) - 1)] != days):
        raise TierHpoError(f"{what} has no score on some common day; rerun its stage")
    labels = scores.y[pos]
    if y is not None and not np.array_equal(labels, y):
        bad = int(np.sum(labels != y))
        raise TierHpoError(f"{what} disagrees with the other models on {bad} label(s) of the common days; "
                           "its inputs are stale: rerun `dvc repro`")
    return labels, scores.p[:, pos]
