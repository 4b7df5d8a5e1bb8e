"""GPU benchmark: the training-throughput comparison on a GPU, and CIFAR-10 VGG throughput.

Run on a machine with a CUDA GPU (figures as JSON, ratios measured side by side):

    python bench/gpu_bench.py --output gpu_bench.json

1. One epoch of the MNIST-shaped MLP (784-512-10) at batch 64: our trainer (data preloaded on the
   GPU) vs the seed's loop (torchvision MNIST + ToTensor through a DataLoader, each batch copied
   to the GPU) vs a hand-written loop over preloaded GPU tensors. Target: >= 20x the seed's loop.
2. Gradient accumulation: one epoch of the same MLP at effective batch 256, as 4 x 64 against
   1 x 256 (the training-engine issue's target: <= 1.2x), with a hand-written 4 x 64 loop beside.
3. CIFAR-10 VGG (width 1.0, batch 256) training images/second with autocast off/bf16 and
   torch.compile off/on (channels_last on the GPU).

``--device cpu --quick`` runs every code path in seconds on a CPU (the test suite does, to keep
the script working); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fake_datasets import write_cifar10, write_mnist
from bench.train_throughput import NoTrial, model
from hpsearch.objectives.datasets import load_dataset
from hpsearch.objectives.models import VGG
from hpsearch.objectives.trainer import TrainConfig, train_classifier


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    methods: dict[str, Callable[[], None]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median seconds of each method, the methods interleaved so that drift hits all alike."""
    for run in methods.values():
        run()  # warm-up (and compilation)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mlp_comparison(root: str, device: torch.device, repeats: int) -> dict[str, Any]:
    loader = torch.utils.data.DataLoader(
        torchvision.datasets.MNIST(root, train=True, transform=torchvision.transforms.ToTensor()),
        batch_size=64,
        shuffle=True,
        num_workers=0,
    )
    data = load_dataset("mnist", root, val_fraction=0.001).to(device)

    def seed() -> None:
        net = model(512).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()

    def hand() -> None:
        net = model(512).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        order = torch.randperm(len(data.x_train), device=device)
        for start in range(0, len(order) - 63, 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            F.cross_entropy(net(data.x_train[index]), data.y_train[index]).backward()
            optimizer.step()

    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.0, amp="off")

    def ours() -> None:
        train_classifier(NoTrial(), model(512).to(device), data, cfg)

    medians = measure({"seed_loop": seed, "ours": ours, "hand_written": hand}, device, repeats)
    return {
        "median_seconds": {k: round(v, 4) for k, v in medians.items()},
        "speedup_vs_seed_loop": round(medians["seed_loop"] / medians["ours"], 2),
        "ours_vs_hand_written": round(medians["ours"] / medians["hand_written"], 3),
    }


def accumulation_comparison(root: str, device: torch.device, repeats: int) -> dict[str, Any]:
    data = load_dataset("mnist", root, val_fraction=0.001).to(device)

    def ours(micro: int | None) -> Callable[[], None]:
        cfg = TrainConfig(
            epochs=1,
            batch_size=256,
            lr=0.01,
            optimizer="sgd",
            momentum=0.0,
            micro_batch=micro,
            amp="off",  # as the hand-written loop
        )
        return lambda: train_classifier(NoTrial(), model(512).to(device), data, cfg)

    def hand_4x64() -> None:
        net = model(512).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        order = torch.randperm(len(data.x_train), device=device)
        for start in range(0, len(order) - 255, 256):
            for k in range(4):
                index = order[start + 64 * k : start + 64 * (k + 1)]
                (F.cross_entropy(net(data.x_train[index]), data.y_train[index]) / 4).backward()
            optimizer.step()
            optimizer.zero_grad()

    medians = measure(
        {"ours_1x256": ours(None), "ours_4x64": ours(64), "hand_4x64": hand_4x64}, device, repeats
    )
    return {
        "median_seconds": {k: round(v, 4) for k, v in medians.items()},
        "ours_4x64_vs_ours_1x256": round(medians["ours_4x64"] / medians["ours_1x256"], 3),
        "ours_4x64_vs_hand_4x64": round(medians["ours_4x64"] / medians["hand_4x64"], 3),
    }


def vgg_throughput(root: str, device: torch.device, repeats: int, quick: bool) -> dict[str, Any]:
    """Images/second of one training epoch per setting, each model built (and compiled) once."""
    data = load_dataset("cifar10", root, val_fraction=0.01).to(device)
    methods: dict[str, Callable[[], None]] = {}
    for amp in ("off", "bf16"):
        for compile_model in (False, True):
            if quick and compile_model:
                continue  # compilation takes minutes on a CPU
            cfg = TrainConfig(
                epochs=1,
                batch_size=256 if not quick else 32,
                lr=0.05,
                optimizer="sgd",
                amp=amp,
                compile=compile_model,
            )
            torch.manual_seed(0)
            net = VGG(10, width=1.0 if not quick else 0.125).to(device)

            def run(cfg: TrainConfig = cfg, net: torch.nn.Module = net) -> None:
                train_classifier(NoTrial(), net, data, cfg)

            methods[f"amp_{amp}_compile_{compile_model}"] = run
    medians = measure(methods, device, repeats)
    return {
        name: {
            "median_seconds": round(seconds, 4),
            "images_per_second": round(len(data.x_train) / seconds, 1),
        }
        for name, seconds in medians.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run of every path"
    )
    parser.add_argument(
        "--output", default=os.path.join(os.environ.get("OUT", "."), "gpu_bench.json")
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device here; run it on a GPU machine (or --device cpu --quick)",
            file=sys.stderr,
        )
        return 2
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as root:
        write_mnist(Path(root), n_train=600 if args.quick else 60000)
        write_cifar10(Path(root), per_batch=64 if args.quick else 10000)
        results = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "quick": args.quick,
            "mlp_784_512_10_batch_64": mlp_comparison(root, device, repeats),
            "accumulation_256": accumulation_comparison(root, device, repeats),
            "cifar10_vgg": vgg_throughput(root, device, repeats, args.quick),
        }
    text = json.dumps(results, indent=2)
    print(text)
    Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
