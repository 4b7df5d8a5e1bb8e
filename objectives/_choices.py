"""The closed sets of values the built-in training options take, torch-free: the registry
validates study files with them, and the trainer, schedules and datasets check against the same
tuples, so a new choice is added in one place."""

from __future__ import annotations

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle", "plateau")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
QUANTIZE_MODES = ("none", "dynamic-int8")
ON_NONFINITE = ("prune", "fail")
STRATEGIES = ("ddp", "fsdp")
