"""The GPU profile stays a drop-in replacement for params.yaml (same keys, the study's scale)."""

from __future__ import annotations

from pathlib import Path

import yaml

from training.budget import parse_budget

REPO = Path(__file__).resolve().parents[1]


def key_paths(tree: object, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict) or prefix.endswith(".space"):  # a search space is data: its entries may differ
        return {prefix}
    return set().union(*(key_paths(v, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()))


def test_gpu_profile_has_exactly_the_keys_of_params_yaml():
    cpu = yaml.safe_load((REPO / "params.yaml").read_text())
    gpu = yaml.safe_load((REPO / "profiles" / "gpu.yaml").read_text())
    assert key_paths(gpu) == key_paths(cpu)


def test_gpu_profile_is_the_original_study_scale():
    gpu = yaml.safe_load((REPO / "profiles" / "gpu.yaml").read_text())["hpo"]
    assert [parse_budget(b) for b in gpu["budgets"]] == [2_000_000, 20_000_000, 200_000_000]
    assert gpu["trials"] == 50


def test_cpu_profile_spans_at_least_10x_in_budget():
    cpu = yaml.safe_load((REPO / "params.yaml").read_text())["hpo"]
    budgets = sorted(parse_budget(b) for b in cpu["budgets"])
    assert len(budgets) == 3 and budgets[-1] >= 10 * budgets[0]
