"""Worker scaling: the same digits study with 1 and 2 workers on this machine.

Every trial does the same work (batch size and width fixed; only the learning rate, L2 and dropout
are searched, with the random sampler and no pruner), so the wall time measures parallelism, not
a different search path. Two times per run: the span from the first trial's start to the last
one's end (what the workers' trials take), and the whole `hpsearch run` command (interpreter and
worker start-up included: what a user waits for). Runs alternate between 1 and 2 workers.

The machine's own ceiling is measured beside it: the same training steps in plain torch, as one
process with both cores' threads doing two shares, against two processes of one thread doing one
share each (spawned processes, start-up excluded). Two cores of a virtual machine need not give
twice the work of one; this says what 2 workers could reach here at best.
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
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


def train_share(threads: int, shares: int, steps: int) -> float:
    """Seconds for ``shares`` x ``steps`` training steps of the study's model on ``threads``."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    started = time.perf_counter()
    for _ in range(shares * steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - started


def machine_ceiling(*, steps: int, repeats: int) -> float:
    """Two processes x one share against one process x two shares: the best 2 workers can do."""
    context = multiprocessing.get_context("spawn")
    ratios = []
    with context.Pool(2) as pool:
        pool.starmap(train_share, [(1, 1, 10)] * 2)  # start-up and first-step costs, not timed
        for _ in range(repeats):
            one = pool.apply(train_share, (2, 2, steps))
            two = max(pool.starmap(train_share, [(1, 1, steps)] * 2))
            ratios.append(two / one)
    return statistics.median(ratios)


def measure(*, quick: bool) -> dict[str, Any]:
    n_trials, epochs, repeats = (4, 1, 1) if quick else (12, 10, 3)
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    spans: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as folder:
        study_file = Path(folder) / "scaling.toml"
        study_file.write_text(STUDY_FILE.format(n_trials=n_trials, epochs=epochs))
        for repeat in range(repeats):
            for workers in (1, 2):
                url = f"sqlite:///{folder}/scaling-{workers}-{repeat}.db"
                started = time.perf_counter()
                subprocess.run(
                    [hpsearch, "run", str(study_file), "--storage", url, "--workers", str(workers)],
                    check=True,
                    capture_output=True,
                    cwd=folder,  # checkpoints go under the run's folder
                )
                walls[workers].append(time.perf_counter() - started)
                spans[workers].append(study_span(url))
    one, two = statistics.median(spans[1]), statistics.median(spans[2])
    wall_one, wall_two = statistics.median(walls[1]), statistics.median(walls[2])
    return {
        "trials": n_trials,
        "epochs_per_trial": epochs,
        "repeats": repeats,
        "median_seconds": {"1_worker": round(one, 2), "2_workers": round(two, 2)},
        "two_over_one": round(two / one, 3),
        "command_seconds": {"1_worker": round(wall_one, 2), "2_workers": round(wall_two, 2)},
        "command_two_over_one": round(wall_two / wall_one, 3),
        "machine_ceiling": round(
            machine_ceiling(steps=50 if quick else 1500, repeats=1 if quick else 3), 3
        ),
    }
