"""Where a trial's ranks train: the rank and world size, each rank's device, and autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def distributed_rank() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def trial_device(name: str = "auto") -> torch.device:
    """The device this rank trains on: ``auto`` is CUDA where there is one; a DDP rank takes
    its own GPU (the launcher restricts CUDA_VISIBLE_DEVICES to the trial's)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    rank, world = distributed_rank()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)
    return device


def autocast_dtype(amp: str) -> torch.dtype | None:
    """What CUDA computes in under ``amp``: None for full precision."""
    if amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    dtype = autocast_dtype(amp) if device.type == "cuda" else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp: str = "off", batch_size: int = 4096
) -> float:
    """Accuracy on (x, y); under DDP each rank scores a shard and the counts are summed."""
    rank, world = distributed_rank()
    model.eval()
    x, y = x[rank::world], y[rank::world]
    counts = torch.zeros(2, dtype=torch.float64, device=x.device)
    with autocast(x.device, amp):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            counts[0] += (logits.argmax(dim=1) == y[start : start + batch_size]).sum()
    counts[1] = len(x)
    if world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])
