"""docs/features.md, generated from the code: what the model sees, gaps, and the feature registry.

``python -m training.features > docs/features.md`` (or ``python -m training.feature_docs``);
tests/test_features.py keeps the file in sync.
"""

from __future__ import annotations

from common import limits
from training.features import FEATURES, TIER_SIZES, WARMUP_ROWS
from training.inputs import STATIONARY_COLUMNS, STATIONARY_FORMULAS, STATIONARY_LOOKBACK


def feature_table_markdown() -> str:
    """The feature table of docs/features.md, generated from the registry."""
    lines = [
        "# Features",
        "",
        "Generated from `training/features.py` (`python -m training.features > docs/features.md`);",
        "a test keeps this file in sync with the code.",
        "",
        "## What the model sees",
        "",
        "Every tier dataset keeps the 5 raw OHLCV base columns (`open, high, low, close, volume`): the labels",
        "are computed from them, and `tierhpo validate` recomputes the labels from the raw prices. The raw",
        "price and volume *levels* are not stationary, so they never reach a network or a baseline. The",
        "model and the baselines see `training.inputs.input_columns(tier)`: the 5 stationary forms of the",
        "bar below, then the tier's engineered features (a20 = the first 20 rows of the feature table,",
        f"a50 = the first 50, a100 = all {len(FEATURES)}), standardised with the training split's mean and sd.",
        "",
        "| # | name | formula | window |",
        "|---|------|---------|--------|",
        *(f"| {i} | `{name}` | {STATIONARY_FORMULAS[name]} | {STATIONARY_LOOKBACK[name]} |"
          for i, name in enumerate(STATIONARY_COLUMNS, start=1)),
        "",
        "`log_vol_rel` carries the same information as `volume_ratio_20` (a20 and up); it is kept so the",
        "bar's own 5 forms are complete in every tier.",
        "",
        "A served model flags (never refuses) a window whose largest |z| after this standardisation is",
        f"above {limits.SERVING_Z_LIMIT:g}: output columns `outside_training_range` and `max_excess_z` beside",
        "`probability` (`training/serving.py`, `docs/limits.md`).",
        "",
        "## Calendar gaps",
        "",
        f"A step between consecutive rows longer than `data.max_gap_days` (default {limits.MAX_GAP_DAYS} calendar days,",
        "about 10 trading days) is a *gap*. By default `tierhpo ingest` and `tierhpo tiers` refuse such data",
        "with one line. With `data.allow_gaps: true` the rows are cut into gap-free segments and the tier",
        "builder computes features and labels per segment: each segment drops its own warm-up rows and",
        "its last max(horizons) rows (whose label would look across the gap), and every input window that",
        "spans a segment boundary is dropped from its split (`training.splits.window_ends`). So no feature",
        "lookback, input window or label window spans a gap; the split file records the gaps and the",
        "`breaks` (first row of each later segment).",
        "",
        "## Engineered features",
        "",
        "All features are strictly causal: the value at day t uses rows up to and including t only.",
        "*Window* is the lookback: the number of rows (day t included) a feature needs before its first",
        "value (for EWM features, its `min_periods`; the recursion itself starts at the first row);",
        f"the first {WARMUP_ROWS} rows (the largest lookback − 1) are dropped from every tier as warm-up,",
        "so all tiers share the same rows, dates and splits.",
        "",
        "Notation: O, H, L, C, V = open, high, low, close, volume of day t; r_t = ln(C_t / C_{t−1});",
        "mean_w, std_w (ddof 1), max_w, min_w, var_w, Σ_w are trailing windows of w rows ending at t;",
        "EWM_a is the recursive exponential average x̄_t = a·x_t + (1 − a)·x̄_{t−1} (pandas `adjust=False`);",
        "TP = (H + L + C) / 3; TR = max(H − L, |H − C_{t−1}|, |L − C_{t−1}|); RS = Rogers–Satchell term.",
        "Volatilities are annualised with 252 days. Ratios with a zero denominator (flat data) take the",
        "stated neutral value instead of ±inf.",
        "",
        "| # | tier | name | family | formula | window |",
        "|---|------|------|--------|---------|--------|",
    ]
    for i, feat in enumerate(FEATURES, start=1):
        tier = next(t for t, n in TIER_SIZES.items() if i <= n)
        formula = feat.formula.replace("|", "\\|")
        lines.append(f"| {i} | {tier} | `{feat.name}` | {feat.family} | {formula} | {feat.lookback} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(feature_table_markdown(), end="")
