"""Random images in the real on-disk formats (MNIST IDX, CIFAR-10 python batches), for benchmarks.

Nothing is downloaded here: the benchmarks measure loading and training speed, for which random
pixels in the real formats serve as well as the real images.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def _idx(array: np.ndarray) -> bytes:
    # IDX: two zero bytes, the type (0x08 = uint8), the number of dimensions, big-endian sizes.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, *, n_train: int, n_test: int = 100, folder: str = "MNIST", seed: int = 0
) -> None:
    """``root/folder/raw/*-idx?-ubyte`` as torchvision's MNIST and FashionMNIST read them."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (n, 28, 28))))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, (n,))))


def write_cifar10(root: Path, *, per_batch: int, seed: int = 0) -> None:
    """``root/cifar-10-batches-py`` as torchvision's CIFAR10 reads it (pickled dicts)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
