"""The benchmark runner keeps a section that cannot be measured here (the GPU one on a CPU machine)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.__main__ import main, replace_section


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu_mfu measures for real")
def test_gpu_section_is_kept_without_cuda(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    kept = replace_section("", "gpu_mfu", "GPU", "| measured on an H200 | 3.1% |")
    out.write_text(kept)
    assert main(["gpu_mfu", "--output", str(out)]) == 0
    assert out.read_text() == kept
    assert "no CUDA device here" in capsys.readouterr().err
