"""The best trial's trained weights, without retraining (``hpsearch export --weights FILE``).

A trial's kept checkpoint holds the weights it ended with: ``hpsearch.fit`` writes the model's
``state_dict`` under ``model`` (a file), or shards it (a folder written by torch.distributed.
checkpoint, on any number of ranks); ``hpsearch.report`` writes the loop's own state, Lightning's
callback the Trainer's checkpoint (the module's weights under ``state_dict``), and Hugging Face's
Trainer its ``checkpoint-STEP`` folders (the latest one's ``model.safetensors``). Export reads
whichever it is, from a folder or an ``s3://`` bucket, gathers shards into one whole
``state_dict``, and writes it with ``torch.save``: ``model.load_state_dict(torch.load(FILE))``
loads it into the unsharded model. ``hpsearch train`` stays for retraining from scratch.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.files import replacing
from hpsearch.storage import is_object_store_url

# What hpsearch.report writes (objectives/reporting.py): the loop's state is under "state".
_REPORT_FORMAT = "hpsearch.report/1"


def write_weights(location: str, output: str, *, trial: int) -> None:
    """Write the weights in the checkpoint at ``location`` to ``output`` (atomically)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="hpsearch-weights-") as scratch:
        local = location
        if is_object_store_url(location):
            from hpsearch.search.runtime._checkpoints import download_checkpoint

            local = os.path.join(scratch, "checkpoint.pt")
            if not download_checkpoint(location, local):
                raise HpsearchError(
                    f"trial {trial}'s checkpoint {location} is gone from the bucket"
                )
        weights = _weights(local, scratch, trial)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with replacing(output) as partial:
        torch.save(weights, partial)


def _weights(path: str, scratch: str, trial: int) -> Any:
    import torch

    trainer = _trainer_weights(path)
    if trainer is not None:
        return trainer
    if os.path.isdir(path):
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        # Every shard, whatever group size wrote them, read into one whole state dict.
        whole = os.path.join(scratch, "whole.pt")
        dcp_to_torch_save(path, whole)
        saved = torch.load(whole, map_location="cpu", weights_only=False)
    else:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise HpsearchError(
                f"trial {trial}'s checkpoint {path} is not a PyTorch checkpoint "
                f"({type(err).__name__}); its objective saves no weights to export: retrain "
                "the exported configuration with `hpsearch train` instead"
            ) from None
    if not isinstance(saved, dict):
        raise HpsearchError(f"trial {trial}'s checkpoint {path} holds no state dict")
    if saved.get("format") == _REPORT_FORMAT and not os.path.isdir(path):
        state = saved.get("state")
        # A loop's own state: its model's weights, where it names them as fit does.
        return state["model"] if isinstance(state, dict) and "model" in state else state
    if "model" not in saved and "pytorch-lightning_version" in saved:
        return saved["state_dict"]  # a Trainer's checkpoint: the LightningModule's weights
    if "model" not in saved:
        raise HpsearchError(
            f"trial {trial}'s checkpoint {path} has no model weights (keys: "
            f"{', '.join(sorted(map(str, saved))[:8])})"
        )
    return saved["model"]


def _trainer_weights(path: str) -> Any:
    """A Hugging Face Trainer's output folder (``checkpoint-STEP`` folders): the latest one's
    model weights; None for any other checkpoint."""
    if not os.path.isdir(path):
        return None
    steps = [
        (int(name.split("-", 1)[1]), name)
        for name in os.listdir(path)
        if name.startswith("checkpoint-") and name.split("-", 1)[1].isdigit()
    ]
    if not steps:
        return None
    folder = os.path.join(path, max(steps)[1])
    safetensors = os.path.join(folder, "model.safetensors")
    if os.path.isfile(safetensors):
        from safetensors.torch import load_file

        return load_file(safetensors)
    import torch

    return torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu")
