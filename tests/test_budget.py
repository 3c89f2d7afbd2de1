"""Budget parsing and the width solver: real parameter counts within +/-10 % of the budget."""

from __future__ import annotations

import pytest

from common.errors import TierHpoError
from training.budget import (
    Architecture,
    ModelParams,
    count_params,
    format_budget,
    model_config,
    parse_budget,
    solve,
)
from training.model import PatchTSTClassifier, build_on_meta, count_parameters


@pytest.mark.parametrize(
    ("text", "value"),
    [("20M", 20_000_000), ("200K", 200_000), ("500k", 500_000), ("2.5M", 2_500_000), ("1B", 10**9),
     ("12345", 12_345), (7, 7), (" 2M ", 2_000_000)],
)
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("junk", ["", "M", "20X", "2M5", "-2M", "abc", "0", "1.5.2M", "0K"])
def test_parse_budget_rejects_junk(junk):
    with pytest.raises(TierHpoError, match="budget"):
        parse_budget(junk)


@pytest.mark.parametrize("n", [20_000_000, 2_500_000, 200_000, 60_000, 1_234, 1_234_567, 10**9])
def test_format_budget_round_trips(n):
    assert parse_budget(format_budget(n)) == n


def test_format_budget_is_short():
    assert [format_budget(n) for n in (20_000_000, 2_500_000, 200_000, 1234)] == ["20M", "2.5M", "200K", "1234"]


ARCHS = [
    Architecture(n_layers=2, n_heads=4, d_ff_ratio=2.0, patch_len=4),
    Architecture(n_layers=6, n_heads=8, d_ff_ratio=4.0, patch_len=8),
    Architecture(n_layers=4, n_heads=2, d_ff_ratio=1.0, patch_len=2, channel_independent=True),
    Architecture(n_layers=3, n_heads=4, d_ff_ratio=2.0, patch_len=4, stride=2, norm="revin", pooling="mean"),
]


@pytest.mark.parametrize("budget", ["2M", "20M", "200M"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"L{a.n_layers}H{a.n_heads}")
def test_solved_real_count_within_ten_percent(arch, budget):
    cfg = solve(arch, budget, n_features=55, context_len=32)
    assert cfg is not None
    real = count_parameters(build_on_meta(cfg))  # sum(p.numel()) of the built network
    assert abs(real - parse_budget(budget)) <= 0.10 * parse_budget(budget)
    assert real == count_params(cfg)
    assert cfg.d_model % cfg.n_heads == 0
    assert (cfg.n_layers, cfg.n_heads, cfg.patch_len) == (arch.n_layers, arch.n_heads, arch.patch_len)


def test_meta_count_matches_a_materialised_model():
    cfg = solve(ARCHS[0], "200K", n_features=20, context_len=32)
    assert count_params(cfg) == sum(p.numel() for p in PatchTSTClassifier(cfg).parameters())


def test_solver_picks_the_closest_width():
    arch = ARCHS[0]
    cfg = solve(arch, "2M", n_features=55, context_len=32)
    miss = abs(count_params(cfg) - 2_000_000)
    for d in (cfg.d_model - cfg.n_heads, cfg.d_model + cfg.n_heads):
        neighbour = model_config(arch, d, n_features=55, context_len=32)
        assert miss <= abs(count_params(neighbour) - 2_000_000)
    # Solving for a model's own count is a fixed point.
    assert solve(arch, count_params(cfg), 55, 32).d_model == cfg.d_model


@pytest.mark.parametrize(
    ("arch", "budget"),
    [
        (Architecture(n_layers=12, n_heads=16, d_ff_ratio=4.0, patch_len=4), "200K"),  # too deep/wide for it
        (Architecture(n_layers=6, n_heads=8, d_ff_ratio=4.0, patch_len=4), "20K"),
        (Architecture(n_layers=2, n_heads=4, d_ff_ratio=2.0, patch_len=64), "2M"),  # patch longer than context
        (Architecture(n_layers=1, n_heads=1, d_ff_ratio=1.0, patch_len=4), "500"),  # embedding alone is bigger
    ],
)
def test_infeasible_architectures_are_rejected(arch, budget):
    assert solve(arch, budget, n_features=55, context_len=32) is None


def test_width_granularity_can_make_a_budget_infeasible():
    # Widths are multiples of n_heads: with 32 heads the neighbours of the ideal width miss a 1 % band,
    # and with 64 heads (head_dim >= 4) they even miss the 10 % band at 2M.
    wide = Architecture(n_layers=2, n_heads=32, d_ff_ratio=4.0, patch_len=4)
    assert solve(wide, "2M", 55, 32, tolerance=0.10) is not None
    assert solve(wide, "2M", 55, 32, tolerance=0.01) is None
    assert solve(Architecture(n_layers=2, n_heads=64, d_ff_ratio=4.0, patch_len=4), "2M", 55, 32) is None


def test_solver_rejects_bad_rules():
    with pytest.raises(TierHpoError, match="tolerance"):
        solve(ARCHS[0], "2M", 55, 32, tolerance=0.2)
    with pytest.raises(TierHpoError, match="n_heads"):
        Architecture(n_layers=2, n_heads=0, d_ff_ratio=2.0, patch_len=4)


def test_model_params_apply_searched_values():
    params = ModelParams(n_layers=2, n_heads=4, dropout=0.2, channel_independent=False)
    cfg = params.solve("200K", n_features=55, context_len=32, n_layers=3, patch_len=8, dropout=0.3)
    assert (cfg.n_layers, cfg.patch_len, cfg.dropout, cfg.n_heads) == (3, 8, 0.3, 4)
    assert abs(count_params(cfg) - 200_000) <= 20_000
    with pytest.raises(TierHpoError, match="not an architecture parameter"):
        params.solve("200K", 55, 32, lr=0.1)
    with pytest.raises(TierHpoError, match="budget_tolerance"):
        ModelParams(budget_tolerance=0.5)


def test_architecture_of_a_solved_config_resolves_to_it():
    arch = Architecture(n_layers=3, n_heads=4, d_ff_ratio=2.0, patch_len=8, norm="revin", pooling="mean")
    cfg = solve(arch, "200K", 55, 32)
    assert Architecture.of(cfg, d_ff_ratio=2.0) == arch
    assert solve(Architecture.of(cfg, 2.0), "200K", 55, 32) == cfg
