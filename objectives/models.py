"""Models whose shape and activation are hyperparameters."""

from __future__ import annotations

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
