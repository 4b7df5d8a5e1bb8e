"""The training engine against a hand-written loop, on the examples' own models and data.

``hpsearch.fit`` trains each example (examples/regression: an MLP on a CSV Dataset through a
DataLoader; examples/charlm: a character-level transformer on windows of text) as its study
file configures it (micro-batches and accumulation, charlm's cosine schedule with warmup), and
so does the loop a user would write by hand with the same pieces: the example's Dataset through
a DataLoader with the same batch size and shuffling, the same model (same seed), Adam at the
same learning rate, the batch split into the same micro-batches, zero_grad/backward/step, the
schedule stepped after each optimizer step, and one validation pass per epoch computing the
example's metric. Both run the same forward passes, evaluation included, on the CPU, and
neither writes a checkpoint (fit writes none outside a worker). One torch thread; the two run
back to back in each round, median of the rounds; the ratio (engine time / hand-written time)
is what to read.

    .venv/bin/python bench/engine_overhead.py [--quick] [--output FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpsearch.objectives.trainer import Metric, fit  # noqa: E402

EXAMPLES = ROOT / "examples"
EVAL_ROWS = 256  # the engine's rows per evaluation forward on a Dataset (at least the micro-batch)

# Each study file's [training] options and mid-range values of its space (the model at a size a
# CPU trains in seconds: charlm's epoch is shorter than its study's); "quick" checks it works.
REGRESSION = {
    "width": 64,
    "depth": 2,
    "batch_size": 64,
    "micro_batch": 32,
    "lr": 3e-3,
    "epochs": 8,
}
REGRESSION_QUICK = {**REGRESSION, "epochs": 2}
CHARLM = {
    "context": 64,
    "width": 64,
    "heads": 4,
    "depth": 2,
    "dropout": 0.1,
    "windows": 512,
    "batch_size": 32,
    "micro_batch": 16,
    "lr": 3e-3,
    "schedule": "cosine",
    "warmup_epochs": 0.5,
    "epochs": 2,
}
CHARLM_QUICK = {**CHARLM, "context": 32, "width": 32, "depth": 1, "windows": 128, "epochs": 1}
COMMON = {"optimizer": "adam", "seed": 0, "device": "cpu"}


class RecordingTrial:
    """A stand-in for the Optuna trial: keeps what fit reports, never prunes."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []
        self.user_attrs: dict[str, Any] = {}

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def example(name: str) -> ModuleType:
    """``examples/<name>/<name>.py`` as a module (the examples are not a package)."""
    path = EXAMPLES / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hpsearch_example_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Loss = Callable[[Any, Any], torch.Tensor]


def with_engine(
    build: Callable[[Mapping[str, Any]], nn.Module],
    params: Mapping[str, Any],
    train: Dataset[Any],
    val: Dataset[Any],
    *,
    loss: Loss,
    metrics: Mapping[str, Metric | Loss],
) -> Callable[[], None]:
    def run() -> None:
        trial = RecordingTrial()
        fit(trial, params, model=build, train=train, val=val, loss=loss, metrics=metrics)
        if len(trial.reports) != params["epochs"]:
            raise AssertionError(f"fit reported {len(trial.reports)} times, not once per epoch")

    return run


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``warmup`` steps, then cosine decay to zero at step ``total``."""
    lr_scheduler = torch.optim.lr_scheduler
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup < 1:
        return cosine
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def by_hand(
    build: Callable[[Mapping[str, Any]], nn.Module],
    params: Mapping[str, Any],
    train: Dataset[Any],
    val: Dataset[Any],
    *,
    loss: Loss,
    score: Loss,
    then: Callable[[float], float] | None = None,
) -> Callable[[], None]:
    """The loop a user writes: ``score`` is a batch mean, averaged over the validation set, then
    passed through ``then``."""
    batch, micro, epochs = params["batch_size"], params["micro_batch"], params["epochs"]
    parts = batch // micro  # micro-batches per optimizer step

    def run() -> None:
        torch.manual_seed(params["seed"])
        model = build(params)
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
        loader = DataLoader(train, batch_size=batch, shuffle=True, drop_last=True)
        val_loader = DataLoader(val, batch_size=EVAL_ROWS)
        scheduler = None
        if params.get("schedule", "none") == "cosine":
            steps = len(loader)
            warmup = round(params["warmup_epochs"] * steps)
            scheduler = cosine_with_warmup(optimizer, warmup, epochs * steps)
        for _ in range(epochs):
            model.train()
            for inputs, target in loader:
                for x, y in zip(inputs.split(micro), target.split(micro), strict=True):
                    step_loss = loss(model(x), y)
                    (step_loss / parts if parts > 1 else step_loss).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
            model.eval()
            total, rows = 0.0, 0
            with torch.inference_mode():
                for inputs, target in val_loader:
                    total += float(score(model(inputs), target)) * len(target)
                    rows += len(target)
            value = total / rows
            if then is not None:
                value = then(value)
            if not math.isfinite(value):
                raise AssertionError(f"the hand-written loop's metric is {value}")

    return run


def seconds(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(
    engine: Callable[[], None], hand: Callable[[], None], repeats: int, **about: Any
) -> dict[str, Any]:
    """Median seconds of each after a warm-up run of both; the two run back to back in each
    round, the engine first in every other round, so that load on a shared machine, which
    changes from second to second, weighs on both alike. Each round's ratio shows the spread."""
    engine()  # warm-up: first-touch allocations, lazy imports
    hand()
    rounds: list[tuple[float, float]] = []
    for number in range(repeats):
        if number % 2 == 0:
            rounds.append((seconds(engine), seconds(hand)))
        else:
            hand_time = seconds(hand)
            rounds.append((seconds(engine), hand_time))
    medians = [statistics.median(times) for times in zip(*rounds, strict=True)]
    ratios = sorted(e / h for e, h in rounds)
    return {
        **about,
        "median_seconds": {"engine": round(medians[0], 4), "hand_written": round(medians[1], 4)},
        "engine_vs_hand_written": round(medians[0] / medians[1], 3),
        "round_ratios": [round(r, 3) for r in ratios],
    }


def regression_row(params: dict[str, Any], repeats: int) -> dict[str, Any]:
    ex = example("regression")
    train, val = ex.CsvRows(ex.DATA, 0, 1600), ex.CsvRows(ex.DATA, 1600)
    params = {**params, **COMMON}
    return compare(
        with_engine(ex.build, params, train, val, loss=F.mse_loss, metrics={"mse": F.mse_loss}),
        by_hand(ex.build, params, train, val, loss=F.mse_loss, score=F.mse_loss),
        repeats,
        train_rows=len(train),
        val_rows=len(val),
        params=params,
    )


def charlm_row(params: dict[str, Any], repeats: int) -> dict[str, Any]:
    ex = example("charlm")
    train_ids, val_ids = ex.split()
    context = params["context"]
    train = ex.Windows(train_ids, context, count=params["windows"])
    val = ex.Windows(val_ids, context)
    params = {**params, **COMMON}
    return compare(
        with_engine(
            ex.build,
            params,
            train,
            val,
            loss=ex.token_cross_entropy,
            metrics={"perplexity": Metric(ex.cross_entropy_per_token, then=math.exp)},
        ),
        by_hand(
            ex.build,
            params,
            train,
            val,
            loss=ex.token_cross_entropy,
            score=ex.token_cross_entropy,
            then=math.exp,
        ),
        repeats,
        train_windows=len(train),
        val_windows=len(val),
        params=params,
    )


def measure(quick: bool = False) -> dict[str, Any]:
    """Both rows; ``quick``: toy sizes and two repetitions (after the warm-up run)."""
    repeats = 2 if quick else 5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: steadier on a shared machine, and alike for both
    try:
        return {
            "torch_threads": 1,
            "repeats": repeats,
            "regression": regression_row(REGRESSION_QUICK if quick else REGRESSION, repeats),
            "charlm": charlm_row(CHARLM_QUICK if quick else CHARLM, repeats),
        }
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, two repetitions")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    text = json.dumps(measure(quick=args.quick), indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
