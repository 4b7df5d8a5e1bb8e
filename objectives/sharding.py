"""Sharded trials: FSDP2 for models bigger than one device, and their sharded checkpoints.

With ``strategy = "fsdp"`` a trial's ranks each hold a shard of every parameter, its gradient
and its optimizer state (``torch.distributed.fsdp.fully_shard``, applied per block, then to the
root), instead of DDP's full copy per rank. Checkpoints are sharded the same way with
``torch.distributed.checkpoint``: every rank writes its shard into the trial's checkpoint
folder, and a group of another size loads it (a resumed trial may land on fewer devices, one
included: a single process reads and writes the same folders, without a process group).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hpsearch.files import replacing

META = "meta.pt"  # the step, schedule, random state and config of a sharded checkpoint

Blocks = Callable[[nn.Module], Iterable[nn.Module]]


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """The units sharded one by one: the layers of the model's largest ModuleList or
    Sequential (a transformer's blocks, an MLP's layers), those holding parameters.

    Each unit's parameters are gathered just before its forward and freed after it, so a
    rank's peak holds one unit in full, not the model.
    """
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList | nn.Sequential)]
    if not stacks:
        return [child for child in model.children() if _has_parameters(child)]
    largest = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))
    return [layer for layer in largest if _has_parameters(layer)]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def shard(
    model: nn.Module,
    device: torch.device,
    *,
    blocks: Blocks | None = None,
    bf16: bool = False,
    offload: bool = False,
) -> nn.Module:
    """Apply FSDP2 to ``model`` (per block, then the root) over this trial's ranks.

    ``bf16``: compute in bfloat16 and reduce gradients in float32 (GPU). ``offload``: keep the
    shards and their optimizer state in host memory between uses.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16
            else MixedPrecisionPolicy()
        ),
        "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
    }
    for block in (blocks or default_blocks)(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP's counterpart of DDP's ``no_sync``: skip the reduce-scatter on micro-steps."""
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every save and load without a process group that it assumes one process:
    that is the intent here (a trial on one device), not news for the worker's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", module="torch")
        yield


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def save(
    path: str, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> None:
    """Every rank writes its shard; the folder at ``path`` is replaced whole, never torn.

    ``model`` is sharded (every rank of the group calls this) or whole (one process, no
    process group needed): a sharded trial retried on one device keeps writing the folder its
    next retry, on any number of devices, resumes from.
    """
    from torch.distributed.checkpoint import state_dict_saver
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist.get_rank() if _distributed() else 0
    partial = f"{path}.partial"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    _barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _quiet_single_process():
        state_dict_saver.save(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=partial,
            no_dist=not _distributed(),
        )
    if rank == 0:
        with replacing(os.path.join(partial, META)) as meta_file:
            torch.save(meta, meta_file)
    _barrier()
    if rank == 0:
        old = f"{path}.old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.isdir(path):
            os.replace(path, old)
        elif os.path.exists(path):
            os.remove(path)  # a single-rank checkpoint of the same slot
        os.replace(partial, path)
        shutil.rmtree(old, ignore_errors=True)
    # Every rank returns once the folder is in place: what follows (the epoch's report) may
    # lead to a decision that resumes from it.
    _barrier()


def load_meta(path: str) -> dict[str, Any] | None:
    """A sharded checkpoint's metadata, or None if ``path`` is not one."""
    meta = os.path.join(path, META)
    if not os.path.isfile(meta):
        return None
    loaded: dict[str, Any] = torch.load(meta, map_location="cpu", weights_only=False)
    return loaded


def load(path: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a sharded checkpoint into this group's shards, whatever group size wrote it; or
    into a whole model (one process, or every rank of a DDP group), which gets every shard."""
    from torch.distributed.checkpoint import state_dict_loader
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    # Loaded in place: DCP fills the tensors of this group's shards, resharding as needed.
    with _quiet_single_process():
        state_dict_loader.load(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=path,
            no_dist=not _distributed(),
        )
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The whole model's weights on the CPU of rank 0 (empty elsewhere): what ``model.pt``
    holds, loadable into the unsharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
