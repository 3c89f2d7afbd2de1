"""PatchTSTClassifier: shapes, the patching options, normalisation semantics and config checks."""

from __future__ import annotations

import pytest
import torch

from common.errors import TierHpoError
from training.model import ModelConfig, PatchTSTClassifier


def config(**overrides) -> ModelConfig:
    base = dict(n_features=5, context_len=12, patch_len=4, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"channel_independent": True},
        {"norm": "revin"},
        {"pooling": "mean"},
        {"stride": 3},  # (12 - 4) % 3 = 2 oldest days dropped, 3 patches
        {"patch_len": 5},  # 12 = 2 * 5 + 2: the two oldest days are dropped
        {"channel_independent": True, "norm": "revin", "pooling": "mean", "stride": 2},
    ],
)
def test_forward_gives_one_logit_per_window(overrides):
    cfg = config(**overrides)
    model = PatchTSTClassifier(cfg)
    x = torch.randn(7, cfg.context_len, cfg.n_features)  # (B, L, F)
    out = model(x)
    assert out.shape == (7,)
    assert torch.isfinite(out).all()
    out.sum().backward()  # every parameter takes part in the graph
    assert all(p.grad is not None for p in model.parameters())


def test_patch_and_token_counts():
    assert config().n_patches == 3 and config().n_tokens == 3
    assert config(stride=2).n_patches == 5
    assert config(channel_independent=True).n_tokens == 3 * 5


def test_channel_mixing_token_embeds_all_features():
    mixing, independent = PatchTSTClassifier(config()), PatchTSTClassifier(config(channel_independent=True))
    assert mixing.embed.in_features == 4 * 5
    assert independent.embed.in_features == 4


def test_oldest_days_outside_the_patches_are_ignored():
    model = PatchTSTClassifier(config(patch_len=5)).eval()  # uses days 2..11 of 12
    x = torch.randn(3, 12, 5)
    y = x.clone()
    y[:, :2] = 100.0
    with torch.inference_mode():
        assert torch.equal(model(x), model(y))


def test_revin_erases_the_level_and_global_keeps_it():
    x = torch.randn(4, 12, 5)
    scaled = x * 3.0 + 2.0  # same shape of every series, higher level and volatility
    torch.manual_seed(0)
    revin = PatchTSTClassifier(config(norm="revin")).eval()
    torch.manual_seed(0)
    plain = PatchTSTClassifier(config()).eval()
    with torch.inference_mode():
        assert torch.allclose(revin(x), revin(scaled), atol=1e-4)
        assert not torch.allclose(plain(x), plain(scaled), atol=1e-2)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = PatchTSTClassifier(config(dropout=0.5))
    x = torch.randn(8, 12, 5)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 15}, "divisible"),
        ({"patch_len": 13}, "exceeds context_len"),
        ({"norm": "batch"}, "norm"),
        ({"pooling": "cls"}, "pooling"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_layers": 0}, "n_layers"),
        ({"stride": -1}, "stride"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(TierHpoError, match=message):
        config(**overrides)


def test_config_round_trips_through_a_dict():
    cfg = config(channel_independent=True, norm="revin")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TierHpoError, match="unknown key"):
        ModelConfig.from_dict({**cfg.to_dict(), "width": 3})
