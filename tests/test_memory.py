"""Memory limits (issue 16): a budget too large for the device is refused before anything is
allocated, and a trial that would exhaust memory fails as that trial, with its reason."""

from __future__ import annotations

import sys

import optuna
import pytest
from hpo_tiny import fresh_stores_from_templates, settings, store_templates, tiny_data, tiny_spec  # noqa: F401
from optuna.trial import TrialState

from common.errors import TierHpoError
from pipelines.cli import app
from training import memory
from training.budget import Architecture, solve
from training.search.study import run_worker
from training.trainer import TrainConfig, train


def test_a_budget_beyond_the_limit_is_refused_with_the_limit_and_how_to_raise_it():
    with pytest.raises(memory.MemoryLimitError) as exc:
        memory.check_budget("100B", max_memory_gb=24)
    msg = str(exc.value)
    assert "1.6 TB" in msg and "limit of 24 GB" in msg and "largest budget that fits is 1.5B" in msg
    assert "--max-memory-gb" in msg and "train.max_memory_gb" in msg and "\n" not in msg
    assert memory.check_budget("100K", max_memory_gb=24) == 100_000
    assert memory.check_budget("1B", max_memory_gb=24) == 10**9  # 16 GB fits under 24 GB
    assert memory.limit().bytes > 0  # the default: a fraction of this machine


def test_cli_refuses_budget_100B_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tierhpo", "hpo", "--tier", "a20", "--budget", "100B", "--horizon", "1",
                                      "--max-memory-gb", "24"])
    with pytest.raises(SystemExit) as exc:
        app()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("tierhpo: error: budget 100B needs at least 1.6 TB") and "--max-memory-gb" in err


def test_guard_counts_activations_and_the_trainer_refuses_before_allocating():
    data = tiny_data()
    cfg = solve(Architecture(n_layers=2, n_heads=2, d_ff_ratio=2.0, patch_len=4), "5K",
                data.n_features, data.context_len)
    small = memory.trial_bytes(cfg, 5000, 64, 512, len(data.features))
    assert memory.trial_bytes(cfg, 5000, 128, 512, len(data.features)) > small > memory.state_bytes(5000)
    with pytest.raises(memory.MemoryLimitError, match="activations at batch_size 64"):
        train(cfg, TrainConfig(max_epochs=1, batch_size=64, progress=False, max_memory_gb=small / 2 / 1e9), data)
    with pytest.raises(TierHpoError, match="max_memory_gb"):
        TrainConfig(max_memory_gb=0)


def test_a_trial_over_the_limit_fails_as_that_trial_with_its_reason():
    data = tiny_data()
    spec = tiny_spec(data, forced=0, train=TrainConfig(max_epochs=1, progress=False, max_memory_gb=1e-6))
    cfg = settings()
    cfg = type(cfg)(**{**cfg.__dict__, "max_consecutive_failures": 2})
    with pytest.raises(TierHpoError, match="all failed .*memory limit"):
        run_worker(spec, data, 1, settings=cfg)
    study = optuna.load_study(study_name=spec.study_name, storage=_storage())
    failed = study.get_trials(states=[TrialState.FAIL])
    assert len(failed) == 2
    reason = failed[0].user_attrs["info"]["fail_reason"]
    assert reason.startswith("MemoryLimitError: this trial needs about") and "--max-memory-gb" in reason


def _storage() -> str:
    from common import paths

    return paths.optuna_storage_url()
