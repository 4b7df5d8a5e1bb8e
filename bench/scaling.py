"""Worker scaling: the same digits study with 1 and 2 workers on this machine.

Every trial does the same work (batch size and width fixed; only the learning rate, L2 and dropout
are searched, with the random sampler and no pruner), so the wall time measures parallelism, not
a different search path. Wall time is the span from the first trial's start to the last one's end
(interpreter start-up excluded, on both sides); runs alternate between 1 and 2 workers.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna

STUDY_FILE = """
[study]
name = "scaling"
objective = "digits-mlp"

[budget]
n_trials = {n_trials}

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[training]
epochs = {epochs}
batch_size = 32
width = 128
depth = 2

[space.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true

[space.l2]
type = "float"
low = 1e-7
high = 1e-3
log = true

[space.dropout]
type = "float"
low = 0.0
high = 0.3
"""


def study_span(url: str) -> float:
    trials = optuna.load_study(study_name="scaling", storage=url).get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (end - start).total_seconds()


def measure(*, quick: bool) -> dict[str, Any]:
    n_trials, epochs, repeats = (4, 1, 1) if quick else (12, 5, 3)
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    spans: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as folder:
        study_file = Path(folder) / "scaling.toml"
        study_file.write_text(STUDY_FILE.format(n_trials=n_trials, epochs=epochs))
        for repeat in range(repeats):
            for workers in (1, 2):
                url = f"sqlite:///{folder}/scaling-{workers}-{repeat}.db"
                subprocess.run(
                    [hpsearch, "run", str(study_file), "--storage", url, "--workers", str(workers)],
                    check=True,
                    capture_output=True,
                    cwd=folder,  # checkpoints go under the run's folder
                )
                spans[workers].append(study_span(url))
    one, two = statistics.median(spans[1]), statistics.median(spans[2])
    return {
        "trials": n_trials,
        "epochs_per_trial": epochs,
        "repeats": repeats,
        "median_seconds": {"1_worker": round(one, 2), "2_workers": round(two, 2)},
        "two_over_one": round(two / one, 3),
    }
