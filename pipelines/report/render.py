"""Markdown from the Jinja2 templates in ``templates/``: the data is the report dict, the wording
lives in the templates, and the few formatting rules live here as filters."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2

from evaluation import scaling
from pipelines.report.params import BASELINE_NAMES

TEMPLATES = Path(__file__).with_name("templates")

SCALING_WORDS = {
    scaling.MONOTONIC: "Test AUC rises with the real parameter count at every step, and every step is a "
                     "significant gain (paired, Holm-adjusted). On this test split, larger is better.",
    scaling.VIOLATED: "A larger model is significantly worse than a smaller one on the same test days "
                    "(paired, Holm-adjusted). On this test split, scaling is violated.",
    scaling.INCONCLUSIVE: "The data cannot order these budgets: no larger model is significantly worse, but not every "
                        "step up is a significant gain. Differences between point estimates below are within "
                        "noise and must not be read as a trend.",
}


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def ci(row: dict[str, Any], digits: int = 4) -> str:
    """``est [low, high]`` from either ``{auc, lo, hi}`` (stats) or ``{estimate, low, high}`` (Interval)."""
    est, lo, hi = ((row["auc"], row["lo"], row["hi"]) if "auc" in row else (row["estimate"], row["low"], row["high"]))
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def signed_ci(row: dict[str, Any]) -> str:
    est, lo, hi = ((row["diff"], row["lo"], row["hi"]) if "diff" in row else (row["estimate"], row["low"], row["high"]))
    level = row.get("level")  # a Holm family's interval is wider than 1 - alpha: say so
    return f"{est:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (f" at {level:.1%}" if level is not None else "")


def pval(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def cell_text(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f}"


def md_table(header: list[Any], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, spaces to hyphens, punctuation dropped."""
    return "".join(ch for ch in text.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def method_text(p: dict[str, Any]) -> str:
    if p["method"] == "delong":
        return "DeLong, iid: it understates the variance when labels overlap (horizon > 1)"
    block = f"block length {p['block_length']}" if p["block_length"] else "block length max(horizon, Politis-White)"
    return f"{p['method']} block bootstrap over test days, {p['bootstrap_reps']} resamples, {block}, seed {p['seed']}"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters.update(fmt=fmt, fmt_param=fmt_param, pct=pct, ci=ci, signed_ci=signed_ci, pval=pval,
                       cell_text=cell_text, anchor=anchor)
    env.globals.update(md_table=md_table, SCALING_WORDS=SCALING_WORDS, BASELINE_NAMES=BASELINE_NAMES,
                       method_text=method_text)
    return env


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>.md.j2``; runs of blank lines collapse to one."""
    text = environment().get_template(f"{name}.md.j2").render(**context)
    out: list[str] = []
    for line in text.splitlines():
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"
