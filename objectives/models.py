"""Models whose shape and activation are hyperparameters."""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown activation {name!r}; expected one of: {', '.join(_ACTIVATIONS)}"
        ) from None


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units; the seed's MNIST MLP is MLP(784, 10, 512, 1)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        width: int = 512,
        depth: int = 1,
        activation_name: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        if width < 1 or depth < 0:
            raise ValueError(f"MLP needs width >= 1 and depth >= 0, got {width=} {depth=}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), activation(activation_name)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


# The VGG-style stack: channels per conv layer, "M" for a 2x2 max-pool.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG-style CNN for 32x32 images; ``width`` scales every layer so a small one fits a CPU.

    ``batch_norm`` adds BatchNorm after each conv (as the CIFAR-10 VGGs do).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        width: float = 1.0,
        activation_name: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
        layers: tuple[int | str, ...] = VGG11,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for item in layers:
            if item == "M":
                blocks.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(int(item) * width))
            blocks.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(out))
            blocks.append(activation(activation_name))
            channels = out
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(channels, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]
