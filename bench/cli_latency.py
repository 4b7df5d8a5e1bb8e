"""Command-line latency: CPU time of `hpsearch --help`, `status` and `studies` against
`optuna --help` and `optuna studies` on the same SQLite storage.

CPU time (user + system of the child, from ``os.wait4``) rather than wall time: it is what a
command costs whatever else the machine runs. The commands are interleaved, one of each per
round, and each figure is the median over the rounds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STUDY_FILE = """
[study]
name = "cli-latency"
objective = "trivial.py:objective"
direction = "minimize"

[budget]
n_trials = 10

[space.x]
type = "float"
low = -10.0
high = 10.0
"""
TARGET = 1.3  # hpsearch's CPU time at most 1.3x Optuna's own command's


def cpu_seconds(argv: list[str]) -> float:
    """User + system CPU seconds of one run of ``argv`` (which must succeed)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        stderr = process.stderr.read().decode() if process.stderr else ""
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): {stderr}")
    if process.stderr:
        process.stderr.close()
    return usage.ru_utime + usage.ru_stime


def measure(*, quick: bool) -> dict[str, Any]:
    repeats = 2 if quick else 5
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "trivial.py").write_text((ROOT / "bench" / "trivial.py").read_text())
        study_file = Path(folder) / "study.toml"
        study_file.write_text(STUDY_FILE)
        url = f"sqlite:///{folder}/cli.db"
        hpsearch, optuna = str(BIN / "hpsearch"), str(BIN / "optuna")
        subprocess.run([hpsearch, "create", str(study_file), "--storage", url], check=True)
        commands = {
            "hpsearch --help": [hpsearch, "--help"],
            "hpsearch status": [hpsearch, "status", "--study", "cli-latency", "--storage", url],
            "hpsearch studies": [hpsearch, "studies", "--storage", url],
            "optuna --help": [optuna, "--help"],
            "optuna studies": [optuna, "studies", "--storage", url],
        }
        for argv in commands.values():  # one unmeasured run each: the disk cache is warm
            cpu_seconds(argv)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, argv in commands.items():
                samples[name].append(cpu_seconds(argv))
    median = {name: statistics.median(values) for name, values in samples.items()}
    pairs = [
        ("hpsearch --help", "optuna --help"),
        ("hpsearch status", "optuna studies"),
        ("hpsearch studies", "optuna studies"),
    ]
    return {
        "repeats": repeats,
        "cpu_seconds": {name: round(value, 3) for name, value in median.items()},
        "rows": [
            {"ours": ours, "baseline": base, "ratio": round(median[ours] / median[base], 2)}
            for ours, base in pairs
        ],
        "target": TARGET,
    }
