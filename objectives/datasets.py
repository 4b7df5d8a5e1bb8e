"""Image datasets by name, as preloaded tensors: digits, MNIST, Fashion-MNIST and CIFAR-10.

MNIST, Fashion-MNIST and CIFAR-10 are read by torchvision's own dataset classes, whose decoded
arrays are converted to normalised float32 NCHW tensors in one step (no per-sample transforms).
Validation is a fixed slice of the official train split, so every trial is scored on the same
images and the official test split is never touched.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hpsearch.errors import ObjectiveError, did_you_mean
from hpsearch.objectives._choices import DATASETS
from hpsearch.objectives.data import TensorDataset, load_digits


@dataclass(frozen=True)
class _ImageSource:
    label: str  # the name used in messages
    torchvision_class: str  # attribute of torchvision.datasets
    # Every file torchvision insists on, relative to data_dir. It checks the test split's files
    # too, although only the train split is read.
    files: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the [0, 1]-scaled pixels
    std: tuple[float, ...]


def _idx_files(folder: str) -> tuple[str, ...]:
    return tuple(
        f"{folder}/raw/{split}-{kind}"
        for split in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )


_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

_SOURCES = {
    "mnist": _ImageSource("MNIST", "MNIST", _idx_files("MNIST"), (0.1307,), (0.3081,)),
    "fashion-mnist": _ImageSource(
        "Fashion-MNIST", "FashionMNIST", _idx_files("FashionMNIST"), (0.2860,), (0.3530,)
    ),
    "cifar10": _ImageSource(
        "CIFAR-10",
        "CIFAR10",
        tuple(f"cifar-10-batches-py/{name}" for name in _CIFAR10_FILES),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}


def load_dataset(
    name: str, data_dir: str = "data", *, download: bool = False, val_fraction: float = 0.1
) -> TensorDataset:
    """Load dataset ``name`` (one of ``DATASETS``) from ``data_dir``, split into train/validation.

    ``digits`` ships with scikit-learn and ignores ``data_dir`` and ``download``. The others are
    read from the directory layout torchvision uses; ``download=True`` lets torchvision fetch
    them. Results are cached per process, since a worker runs many trials on the same data.
    """
    if name not in DATASETS:
        raise ObjectiveError(
            f"Unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}."
            f"{did_you_mean(name, DATASETS)}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ObjectiveError(
            f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}."
        )
    if name == "digits":
        return load_digits(val_fraction)
    # Absolute, so that the cache key and the error message do not depend on a later chdir.
    root = os.path.abspath(os.path.expanduser(data_dir))
    return _load_images(name, root, val_fraction, download)


@functools.lru_cache(maxsize=4)
def _load_images(name: str, root: str, val_fraction: float, download: bool) -> TensorDataset:
    source = _SOURCES[name]
    raw = _open_torchvision(source, root, download)
    # MNIST-like: a (N, 28, 28) uint8 tensor; CIFAR-10: a (N, 32, 32, 3) uint8 numpy array (HWC).
    images = torch.as_tensor(raw.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    x = images.contiguous().to(torch.float32).div_(255.0)
    x.sub_(torch.tensor(source.mean).view(1, -1, 1, 1)).div_(
        torch.tensor(source.std).view(1, -1, 1, 1)
    )
    y = torch.as_tensor(raw.targets, dtype=torch.long)

    # A fixed permutation: the same validation images for every trial and every worker.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_val = max(1, round(len(x) * val_fraction))
    if n_val >= len(x):
        raise ObjectiveError(
            f"val_fraction = {val_fraction} leaves no training images out of {len(x)} in {source.label}; lower it."
        )
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train], x[val], y[val], num_classes=10)  # all have ten


def _open_torchvision(source: _ImageSource, root: str, download: bool) -> Any:
    """torchvision's dataset object for the train split; missing files become one-line errors."""
    # Imported here: torchvision adds seconds to start-up, and digits never needs it.
    from torchvision import datasets

    if source.torchvision_class == "CIFAR10" and not download:
        dataset_class = _cifar10_files_present()
    else:
        dataset_class = getattr(datasets, source.torchvision_class)
    try:
        return dataset_class(root, train=True, download=download)
    except (RuntimeError, OSError) as err:  # a failed download is a URLError, an OSError
        missing = [f for f in source.files if not os.path.isfile(os.path.join(root, f))]
        if not missing:
            raise
        expected = ", ".join(missing)
        if download:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ObjectiveError(
                f"{source.label} could not be downloaded into {root} ({reason}); check this machine's internet access, or put the files there (expected {expected}) and set download = false in [training]."
            ) from None
        raise ObjectiveError(
            f"{source.label} not found under {root} (expected {expected}); put the files there, or set download = true in [training] on a machine with internet access."
        ) from None


@functools.cache
def _cifar10_files_present() -> Any:
    """torchvision's CIFAR10, except that its check only requires every expected file to exist.

    torchvision compares the md5 of each batch file and of batches.meta with the official
    archive's and refuses any other bytes as "not found or corrupted": a copy whose arrays are
    identical but that was pickled again (another protocol, another Python), or a test's tiny
    batches. ``check_integrity(path, None)`` only tests that the file exists, so clearing the
    md5s relaxes exactly that check and leaves the parsing to torchvision. It is only used with
    download=False: when downloading, the md5 check is what decides whether to fetch the archive.
    Built on first use so that importing this module does not import torchvision.
    """
    from torchvision.datasets import CIFAR10

    class _CIFAR10FilesPresent(CIFAR10):  # type: ignore[misc]  # torchvision is untyped
        train_list: ClassVar[list[list[str | None]]] = [[f, None] for f, _ in CIFAR10.train_list]
        test_list: ClassVar[list[list[str | None]]] = [[f, None] for f, _ in CIFAR10.test_list]
        meta: ClassVar[dict[str, str | None]] = {**CIFAR10.meta, "md5": None}

    return _CIFAR10FilesPresent
