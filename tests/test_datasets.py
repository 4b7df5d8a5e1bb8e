"""load_dataset on tiny files written in the real on-disk formats, read by torchvision's own code.

Every image carries its id in its top-left pixel (red channel for CIFAR-10), so a test can tell
which written image each loaded row is without knowing the split's permutation. Test-split images
get ids from 200 up, so any of them showing up in train/validation is caught.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from hpsearch.objectives import ObjectiveError
from hpsearch.objectives.data import load_digits
from hpsearch.objectives.datasets import load_dataset

N_TRAIN = 40  # MNIST-like train images
TEST_FIRST_ID = 200
BRIGHT = (3, 5)  # (row, col) written as 255 in every MNIST-like image
CIFAR_PIXEL = (7, 20)  # (row, col) written as CIFAR_RGB; row != col catches a swapped H/W
CIFAR_RGB = (255, 128, 0)
CIFAR_BATCH = 4  # images per data_batch_N, so 20 train images


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file: magic (2051 images, 2049 labels), big-endian int32 dims, uint8."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = struct.pack(f">{1 + array.ndim}i", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for split, n, first_id in (("train", N_TRAIN, 0), ("t10k", 6, TEST_FIRST_ID)):
        ids = np.arange(first_id, first_id + n)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = ids
        images[:, BRIGHT[0], BRIGHT[1]] = 255
        (raw / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(ids % 10))


def write_cifar10(root: Path) -> None:
    """The python-pickle layout: each row 3072 bytes, 1024 red, then green, then blue (row-major).

    torchvision unpickles with encoding="latin1" and indexes entry["data"]: the official files are
    Python 2 pickles whose str keys arrive as str that way, so the keys here are str, not bytes.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [(f"data_batch_{i}", (i - 1) * CIFAR_BATCH) for i in range(1, 6)]
    for name, first_id in [*batches, ("test_batch", TEST_FIRST_ID)]:
        ids = np.arange(first_id, first_id + CIFAR_BATCH)
        images = np.zeros((CIFAR_BATCH, 3, 32, 32), dtype=np.uint8)
        images[:, 0, 0, 0] = ids
        for channel, value in enumerate(CIFAR_RGB):
            images[:, channel, CIFAR_PIXEL[0], CIFAR_PIXEL[1]] = value
        entry = {
            "batch_label": name,
            "data": images.reshape(CIFAR_BATCH, 3072),
            "labels": [int(i % 10) for i in ids],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    meta = {"label_names": names, "num_cases_per_batch": CIFAR_BATCH, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def ids_of(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """The id written in each image's top-left pixel (first channel), undoing the normalisation."""
    return torch.round((x[:, 0, 0, 0] * std + mean) * 255).long()


MNIST_LIKE = [
    # name, folder, mean, std, normalised 255, normalised 0 (by hand: (v/255 - mean) / std)
    ("mnist", "MNIST", 0.1307, 0.3081, 2.821487, -0.424213),
    ("fashion-mnist", "FashionMNIST", 0.2860, 0.3530, 2.022663, -0.810198),
]


@pytest.mark.parametrize(("name", "folder", "mean", "std", "white", "black"), MNIST_LIKE)
def test_mnist_like_loads_the_train_split_normalised(
    tmp_path: Path, name: str, folder: str, mean: float, std: float, white: float, black: float
) -> None:
    write_mnist(tmp_path, folder)
    data = load_dataset(name, str(tmp_path), val_fraction=0.25)

    assert data.x_train.shape == (30, 1, 28, 28) and data.x_val.shape == (10, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.long
    assert data.num_classes == 10 and data.num_features == 784
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    assert float(x[:, 0, BRIGHT[0], BRIGHT[1]].min()) == pytest.approx(white, abs=1e-5)
    assert float(x[:, 0, 1, 1].max()) == pytest.approx(black, abs=1e-5)
    assert float(x.max()) == pytest.approx(white, abs=1e-5)
    ids = ids_of(x, mean, std)
    assert sorted(ids.tolist()) == list(range(N_TRAIN))  # each train image once, no test image
    assert torch.equal(y, ids % 10)


def test_split_follows_val_fraction_and_is_fixed(tmp_path: Path) -> None:
    for copy in ("a", "b"):
        write_mnist(tmp_path / copy, "MNIST")
    first = load_dataset("mnist", str(tmp_path / "a"))
    assert len(first.x_val) == 4 and len(first.x_train) == 36  # 10% by default
    assert load_dataset("mnist", str(tmp_path / "a")) is first  # cached for the next trial
    # Another directory is another cache entry, read afresh: the same images are held out.
    second = load_dataset("mnist", str(tmp_path / "b"))
    assert second is not first
    assert torch.equal(second.x_val, first.x_val) and torch.equal(second.y_val, first.y_val)
    assert torch.equal(second.x_train, first.x_train)
    assert len(load_dataset("mnist", str(tmp_path / "a"), val_fraction=0.5).x_val) == 20


def test_cifar10_pixels_land_in_nchw_normalised_per_channel(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = load_dataset("cifar10", str(tmp_path), val_fraction=0.25)

    assert data.x_train.shape == (15, 3, 32, 32) and data.x_val.shape == (5, 3, 32, 32)
    assert data.x_train.dtype == torch.float32 and data.y_val.dtype == torch.long
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    row, col = CIFAR_PIXEL
    # (255/255 - 0.4914) / 0.2470, (128/255 - 0.4822) / 0.2435, (0 - 0.4465) / 0.2616
    expected = torch.tensor([2.059109, 0.081153, -1.706804]).expand(20, 3)
    assert torch.allclose(x[:, :, row, col], expected, atol=1e-5)
    background = torch.tensor([-1.989474, -1.980287, -1.706804]).expand(20, 3)
    assert torch.allclose(x[:, :, col, row], background, atol=1e-5)  # not transposed
    ids = ids_of(x, 0.4914, 0.2470)
    assert sorted(ids.tolist()) == list(range(5 * CIFAR_BATCH))
    assert torch.equal(y, ids % 10)


def test_stock_torchvision_refuses_these_cifar10_files(tmp_path: Path) -> None:
    """Why load_dataset relaxes the check: torchvision wants the official files' md5."""
    write_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="corrupted"):
        torchvision.datasets.CIFAR10(str(tmp_path), train=True)


@pytest.mark.parametrize(("name", "label"), [("mnist", "MNIST"), ("cifar10", "CIFAR-10")])
def test_missing_directory_is_one_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, label: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ObjectiveError) as caught:
        load_dataset(name, "data")  # relative: the message names the absolute directory
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{label} not found under {Path.cwd() / 'data'} (expected ")
    assert "download = true" in message
    assert caught.value.__suppress_context__  # no torchvision traceback attached


def test_missing_files_are_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ObjectiveError, match="expected cifar-10-batches-py/data_batch_3\\)"):
        load_dataset("cifar10", str(tmp_path))
    write_mnist(tmp_path, "FashionMNIST")
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ObjectiveError, match="expected FashionMNIST/raw/t10k-labels-idx1-ubyte\\)"):
        load_dataset("fashion-mnist", str(tmp_path))


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)  # never the network
    with pytest.raises(ObjectiveError) as caught:
        load_dataset("mnist", str(tmp_path), download=True)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "could not be downloaded" in message and "download = false" in message


def test_unknown_name_suggests_the_nearest() -> None:
    with pytest.raises(ObjectiveError, match="Did you mean 'fashion-mnist'") as caught:
        load_dataset("fashion_mnist")
    assert "digits, mnist, fashion-mnist, cifar10" in str(caught.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_val_fraction_is_checked(fraction: float) -> None:
    with pytest.raises(ObjectiveError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


def test_digits_delegates() -> None:
    assert load_dataset("digits", "ignored", val_fraction=0.2) is load_digits(0.2)


def test_every_dataset_choice_has_a_loader() -> None:
    from hpsearch.objectives import datasets

    assert ("digits", *datasets._SOURCES) == datasets.DATASETS


def test_every_activation_choice_builds_a_module() -> None:
    from hpsearch.objectives import _choices, models

    assert tuple(models._ACTIVATIONS) == _choices.ACTIVATIONS
