"""A stock torchvision model on CIFAR-10, trained by hpsearch's engine.

The data comes from hpsearch's CIFAR-10 loader: the python-pickle batches
(``DATA_DIR/cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``, as
torchvision's own CIFAR10 reads them) become normalised NCHW tensors, with a fixed slice of
the official train split for validation (the test split is never read). The model is any
``torchvision.models`` classifier by name, built untrained with ten classes. ImageNet models
shrink a 224-pixel input 32 times; on 32-pixel images a ResNet's stem would leave 8x8 after
its first two layers, so for ResNets ``small_stem`` swaps in the 3x3, stride-1 stem of the
ResNet paper's CIFAR networks (and drops the max-pool).

Run it with ``hpsearch run examples/vision/study.toml`` (``[training] data_dir`` names the
folder that holds ``cifar-10-batches-py``; ``download = true`` fetches it where the network
allows). A GPU is advised: on CPU one epoch of ResNet-18 takes many minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
import torchvision
from torch import nn

import hpsearch
from hpsearch.objectives.datasets import load_dataset

CLASSES = 10


def build(params: Mapping[str, Any]) -> nn.Module:
    model: nn.Module = torchvision.models.get_model(
        str(params["arch"]), weights=None, num_classes=CLASSES
    )
    if isinstance(model, torchvision.models.ResNet) and params.get("small_stem", True):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def objective(trial: Any, params: dict[str, Any]) -> dict[str, float]:
    data = load_dataset(
        "cifar10",
        str(params.get("data_dir", "data")),
        download=bool(params.get("download", False)),
        val_fraction=float(params.get("val_fraction", 0.1)),
    )
    return hpsearch.fit(
        trial,
        params,
        model=build,
        train=(data.x_train, data.y_train),
        val=(data.x_val, data.y_val),
        loss=F.cross_entropy,
        metrics={"val_accuracy": hpsearch.accuracy},
    )
