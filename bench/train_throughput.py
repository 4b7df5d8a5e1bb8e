"""Training throughput on the CPU: our trainer vs the seed's loop vs a hand-written loop.

One epoch of the MNIST-shaped MLP at batch 64, each measured side by side in one run (the
methods interleaved), median of --repeats; and the accumulation overhead (effective batch 256 as
4 x 64 against 1 x 256). Ratios are what to read; absolute times depend on the machine.

    .venv/bin/python bench/train_throughput.py [--samples 12000] [--repeats 5] [--output FILE]

The seed's loop is the classic one: torchvision's MNIST with ``ToTensor`` through a DataLoader
(``num_workers=0``), converting each image from PIL in Python. The hand-written loop indexes
preloaded tensors with a random permutation and nothing else.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fake_datasets import write_mnist
from hpsearch.objectives.datasets import load_dataset
from hpsearch.objectives.models import MLP
from hpsearch.objectives.trainer import TrainConfig, train_classifier


class NoTrial:
    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None: ...


def model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return MLP(784, 10, width=width, depth=1)


def seed_loop(root: str, width: int) -> Callable[[], None]:
    dataset = torchvision.datasets.MNIST(
        root, train=True, transform=torchvision.transforms.ToTensor()
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=0)

    def run() -> None:
        net = model(width)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        net.train()
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(data), target)
            loss.backward()
            optimizer.step()

    return run


def hand_loop(root: str, width: int) -> Callable[[], None]:
    data = load_dataset("mnist", root, val_fraction=0.001)

    def run() -> None:
        net = model(width)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        net.train()
        x, y = data.x_train, data.y_train
        order = torch.randperm(len(x))
        for start in range(0, len(x) - 63, 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            F.cross_entropy(net(x[index]), y[index]).backward()
            optimizer.step()

    return run


def hand_accumulation(root: str, width: int, *, batch: int, micro: int) -> Callable[[], None]:
    """The hand-written loop with gradient accumulation: the floor for ours at this micro-batch."""
    data = load_dataset("mnist", root, val_fraction=0.001)
    steps = batch // micro

    def run() -> None:
        net = model(width)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        net.train()
        x, y = data.x_train, data.y_train
        order = torch.randperm(len(x))
        for start in range(0, len(x) - batch + 1, batch):
            for k in range(steps):
                index = order[start + k * micro : start + (k + 1) * micro]
                (F.cross_entropy(net(x[index]), y[index]) / steps).backward()
            optimizer.step()
            optimizer.zero_grad()

    return run


def our_trainer(
    root: str, width: int, *, batch: int = 64, micro: int | None = None
) -> Callable[[], None]:
    data = load_dataset("mnist", root, val_fraction=0.001)  # one epoch includes a (tiny) evaluation
    cfg = TrainConfig(
        epochs=1, batch_size=batch, lr=0.01, optimizer="sgd", momentum=0.0, micro_batch=micro
    )

    def run() -> None:
        train_classifier(NoTrial(), model(width), data, cfg)

    return run


def measure(methods: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for run in methods.values():
        run()  # warm-up: first-touch allocations, lazy imports
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():  # interleaved, so drift hits every method alike
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure_all(samples: int, repeats: int) -> dict[str, Any]:
    """Every comparison of this script, as one dictionary of figures."""
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "samples": samples,
        "repeats": repeats,
    }
    with tempfile.TemporaryDirectory() as root:
        write_mnist(Path(root), n_train=samples)
        for width in (512, 64):
            medians = measure(
                {
                    "seed_loop": seed_loop(root, width),
                    "ours": our_trainer(root, width),
                    "hand_written": hand_loop(root, width),
                },
                repeats,
            )
            results[f"mlp_784_{width}_10"] = {
                "median_seconds": {k: round(v, 4) for k, v in medians.items()},
                "speedup_vs_seed_loop": round(medians["seed_loop"] / medians["ours"], 2),
                "ours_vs_hand_written": round(medians["ours"] / medians["hand_written"], 3),
            }
        accumulation = measure(
            {
                "ours_1x256": our_trainer(root, 512, batch=256),
                "ours_4x64": our_trainer(root, 512, batch=256, micro=64),
                "hand_1x256": hand_accumulation(root, 512, batch=256, micro=256),
                "hand_4x64": hand_accumulation(root, 512, batch=256, micro=64),
            },
            repeats,
        )
        results["accumulation_256"] = {
            "median_seconds": {k: round(v, 4) for k, v in accumulation.items()},
            "ours_4x64_vs_ours_1x256": round(
                accumulation["ours_4x64"] / accumulation["ours_1x256"], 3
            ),
            # The same ratio for a bare loop: what smaller matrix products cost on this hardware.
            "hand_4x64_vs_hand_1x256": round(
                accumulation["hand_4x64"] / accumulation["hand_1x256"], 3
            ),
            "ours_4x64_vs_hand_4x64": round(
                accumulation["ours_4x64"] / accumulation["hand_4x64"], 3
            ),
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=12000, help="training images (MNIST has 60000)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    results = measure_all(args.samples, args.repeats)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
