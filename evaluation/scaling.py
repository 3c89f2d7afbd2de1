"""The scaling verdict: does test AUC rise with the real parameter count? And the power law fitted to it.

Every budget's model is scored on the *same* test days, so the comparisons are paired: the block
bootstrap (or DeLong) of ``evaluation.stats`` resamples all budgets' AUCs jointly, every pair of
budgets gets a difference with an interval and a p-value, and the p-values are Holm-adjusted over
all pairs (``statsmodels``). A power law ``AUC - 0.5 = a * (N / N_min)**b`` is fitted by generalised
least squares (``scipy.optimize.curve_fit`` with the bootstrap covariance) when there are enough
budgets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from scipy.optimize import curve_fit
from statsmodels.stats.multitest import multipletests

from evaluation.auc import percentile_p, rank_auc
from evaluation.stats import (
    Method,
    bootstrap_aucs,
    check_alpha,
    check_auc_inputs,
    check_resolution,
    delong_cov,
)

MONOTONIC = "monotonic"
VIOLATED = "violated"
INCONCLUSIVE = "inconclusive (within noise)"
VERDICTS = (MONOTONIC, VIOLATED, INCONCLUSIVE)


def scaling_verdict(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    n_params: Mapping[str, int],
    alpha: float = 0.05,
    *,
    method: Method = "stationary",
    horizon: int = 1,
    block_length: int | None = None,
    reps: int = 2000,
    seed: int = 0,
    min_power_law_points: int = 4,
) -> dict:
    """Does test AUC rise with the real parameter count? Budgets are compared on the same days.

    ``scores[budget]`` are the test scores of each budget's model, aligned with ``y``.
    Every pair of budgets gets a paired comparison (larger minus smaller); p-values are
    Holm-adjusted over all pairs (``statsmodels``), which keeps the family-wise error at
    ``alpha``. The verdict:

    - ``violated``: some larger model is significantly *worse* than a smaller one;
    - ``monotonic``: every step up in size (adjacent budgets) is a significant improvement;
    - ``inconclusive (within noise)``: anything else; the data cannot order the budgets.

    A power law ``AUC - 0.5 = a * N**b`` is fitted only with at least ``min_power_law_points``
    budgets, weighted by the bootstrap covariance of the AUCs (they share test days), and
    reported with the exponent's interval.
    """
    check_alpha(alpha)
    names = sorted(scores, key=lambda b: (int(n_params[b]), b))
    if len(names) < 2:
        raise ValueError("a scaling verdict needs at least two budgets")
    if len({int(n_params[b]) for b in names}) < len(names):
        raise ValueError("two budgets have the same real parameter count; they cannot be ordered")
    y, s = check_auc_inputs(y, np.column_stack([np.asarray(scores[b]) for b in names]))
    point = rank_auc(y, s.T)  # (k,)
    z = stats.norm.ppf(1 - alpha / 2)
    if method == "delong":
        _, cov = delong_cov(y, s)
        block = None
        boot = None
    else:
        boot, block = bootstrap_aucs(y, s, reps=reps, block_length=block_length, horizon=horizon,
                                     seed=seed, method=method)
        cov = np.atleast_2d(np.cov(boot, rowvar=False))

    budgets = []
    for j, b in enumerate(names):
        se = float(math.sqrt(cov[j, j]))
        if boot is None:
            lo, hi = max(0.0, point[j] - z * se), min(1.0, point[j] + z * se)
        else:
            lo, hi = np.quantile(boot[:, j], [alpha / 2, 1 - alpha / 2])
        budgets.append({"budget": b, "n_params": int(n_params[b]), "auc": float(point[j]), "se": se,
                        "lo": float(lo), "hi": float(hi)})

    comparisons = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):  # j is the larger model
            diff = float(point[j] - point[i])
            if boot is None:
                se = float(math.sqrt(max(cov[i, i] + cov[j, j] - 2 * cov[i, j], 0.0)))
                lo, hi = float(diff - z * se), float(diff + z * se)
                p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(diff) / se))
            else:
                d = boot[:, j] - boot[:, i]
                se = float(d.std(ddof=1))
                lo, hi = (float(q) for q in np.quantile(d, [alpha / 2, 1 - alpha / 2]))
                p = percentile_p(d)
            comparisons.append({"larger": names[j], "smaller": names[i], "adjacent": j == i + 1,
                                "diff": diff, "se": se, "lo": float(lo), "hi": float(hi), "p_value": p})
    if boot is not None:
        check_resolution(len(boot), len(comparisons), alpha)
    reject, p_holm, _, _ = multipletests([c["p_value"] for c in comparisons], alpha=alpha, method="holm")
    for c, rej, ph in zip(comparisons, reject, p_holm, strict=True):
        c["p_holm"] = float(ph)
        c["significant"] = bool(rej)
        c["direction"] = ("larger better" if c["diff"] > 0 else "smaller better") if rej else "within noise"

    verdict, explanation = _decide(comparisons)
    return {
        "verdict": verdict,
        "explanation": explanation,
        "order": names,
        "budgets": budgets,
        "comparisons": comparisons,
        "power_law": power_law_fit([b["n_params"] for b in budgets], point, cov, alpha, min_power_law_points),
        "alpha": alpha,
        "correction": "holm",
        "method": method,
        "block_length": block,
        "reps": None if boot is None else reps,
        "n_days": len(y),
    }


def _decide(comparisons: Sequence[dict]) -> tuple[str, str]:
    reversals = [c for c in comparisons if c["significant"] and c["diff"] < 0]
    gains = [c for c in comparisons if c["significant"] and c["diff"] > 0]
    adjacent = [c for c in comparisons if c["adjacent"]]

    def fmt(c: dict) -> str:
        return f"{c['larger']} vs {c['smaller']}: {c['diff']:+.4f} (Holm p={c['p_holm']:.3g})"

    if reversals:
        return VIOLATED, "significant reversal(s): " + "; ".join(fmt(c) for c in reversals)
    if all(c["significant"] and c["diff"] > 0 for c in adjacent):
        return MONOTONIC, "every step up in size is a significant gain: " + "; ".join(fmt(c) for c in adjacent)
    noisy = [c for c in adjacent if not c["significant"]]
    text = "no significant reversal; step(s) within noise: " + "; ".join(fmt(c) for c in noisy)
    if gains:
        text += "; significant gain(s): " + "; ".join(fmt(c) for c in gains)
    return INCONCLUSIVE, text


def _power_law(n: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * n**b


def power_law_fit(
    n_params: Sequence[int], aucs: Sequence[float], cov: np.ndarray, alpha: float = 0.05, min_points: int = 4
) -> dict:
    """Fit ``AUC - 0.5 = a * (N / N_min)**b`` (``scipy.optimize.curve_fit``, generalised least squares).

    ``cov`` is the AUCs' covariance (k, k); with ``absolute_sigma=True`` the parameter
    covariance comes from it, and the exponent's interval uses a t distribution with
    ``k - 2`` degrees of freedom. Returns ``{"fitted": False, "reason": ...}`` when the fit is
    not warranted.
    """
    n = np.asarray(n_params, dtype=np.float64)
    a_obs = np.asarray(aucs, dtype=np.float64)
    if len(n) < max(3, min_points):
        return {"fitted": False, "reason": f"needs at least {max(3, min_points)} budgets, have {len(n)}"}
    if (a_obs <= 0.5).any():
        return {"fitted": False, "reason": "an AUC at or below 0.5 has no excess over chance to fit"}
    x = n / n.min()
    excess = a_obs - 0.5
    cov = np.asarray(cov, dtype=np.float64) + np.eye(len(n)) * 1e-12  # keep it invertible
    try:
        popt, pcov = curve_fit(_power_law, x, excess, p0=(excess[0], 0.0), sigma=cov, absolute_sigma=True,
                               maxfev=10_000)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
        return {"fitted": False, "reason": f"fit did not converge: {exc}".splitlines()[0]}
    perr = np.sqrt(np.diag(pcov))
    t = stats.t.ppf(1 - alpha / 2, df=len(n) - 2)
    b, b_se = float(popt[1]), float(perr[1])
    resid = excess - _power_law(x, *popt)
    chi2 = float(resid @ np.linalg.solve(cov, resid))
    return {
        "fitted": True,
        "form": "AUC - 0.5 = a * (N / N_min) ** b",
        "n_min": float(n.min()),
        "a": float(popt[0]), "a_se": float(perr[0]),
        "b": b, "b_se": b_se, "b_lo": b - t * b_se, "b_hi": b + t * b_se,
        "chi2": chi2, "dof": len(n) - 2,
        "chi2_p": float(stats.chi2.sf(chi2, len(n) - 2)) if len(n) > 2 else None,
        "exponent_excludes_zero": bool(b - t * b_se > 0 or b + t * b_se < 0),
    }
