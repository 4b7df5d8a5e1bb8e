"""The benchmark scripts keep working (their figures are read by people, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_gpu_bench_runs_every_path_on_the_cpu(tmp_path: Path) -> None:
    output = tmp_path / "gpu.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--device",
            "cpu",
            "--quick",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(output.read_text())
    assert figures["quick"] is True
    assert set(figures["mlp_784_512_10_batch_64"]["median_seconds"]) == {
        "seed_loop",
        "ours",
        "hand_written",
    }
    assert {"amp_off_compile_False", "amp_bf16_compile_False"} <= set(figures["cifar10_vgg"])


def test_gpu_bench_refuses_without_a_gpu_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine there is nothing to refuse
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--output",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert result.stderr.count("\n") == 1
