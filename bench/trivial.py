"""The trivial objective of the coordination benchmark: what it costs is all coordination.

With ``$HPSEARCH_BENCH_BARRIER`` set to a folder, each process's first call is a warm-up: it
writes ``ready-PID`` there and waits until a ``go`` file appears. The benchmark starts the clock
when every worker is up and waiting, so process start-up (an import of torch, staggered over a
few cores) stays out of the measured trials on both sides.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

BARRIER = "HPSEARCH_BENCH_BARRIER"
_waited = False


def _barrier() -> None:
    global _waited
    folder = os.environ.get(BARRIER)
    if _waited or not folder:
        return
    _waited = True
    (Path(folder) / f"ready-{os.getpid()}").touch()
    go = Path(folder) / "go"
    while not go.exists():
        time.sleep(0.005)


def objective(trial: Any, params: dict[str, Any]) -> float:
    """hpsearch's form: the worker suggests ``x`` from the study file's space."""
    _barrier()
    return float(params["x"]) ** 2


def plain_objective(trial: Any) -> float:
    """Plain Optuna's form, the same search space."""
    _barrier()
    return float(trial.suggest_float("x", -10.0, 10.0)) ** 2
