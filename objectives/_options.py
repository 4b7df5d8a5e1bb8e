"""The training engine's options and their defaults, declared once and torch-free.

``hpsearch.fit`` reads these names from a trial's ``params`` (the study file's ``[training]``
merged under the suggested values); the built-ins read the same names, and the registry checks
a study file's values against the same defaults without importing torch.
"""

from __future__ import annotations

from typing import Any

TRAINING: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,  # effective: samples per optimizer step over all of the trial's devices
    "micro_batch": 0,  # cap on samples per forward on one device (0: no cap)
    "lr": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "nesterov": False,
    "l1": 0.0,
    "l2": 0.0,
    "schedule": "none",
    "warmup_epochs": 0.0,
    "step_size": 10,
    "gamma": 0.1,
    "plateau_patience": 2,
    "plateau_factor": 0.5,
    "amp": "auto",
    "compile": False,
    "device": "auto",
    "seed": 0,
    "on_nonfinite": "prune",
    "checkpoint_every": 0,  # also checkpoint every this many optimizer steps (0: per epoch only)
    "loader_workers": 0,  # DataLoader worker processes for a Dataset (0: load in the trainer)
    "strategy": "ddp",  # how a trial on several devices splits the model: "ddp" or "fsdp"
    "cpu_offload": False,  # fsdp: keep parameter shards and optimizer state in host memory
}
