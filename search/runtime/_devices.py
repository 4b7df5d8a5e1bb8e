"""Which devices each worker process of a node gets.

GPUs are split into groups of ``gpus_per_trial``; each group is one worker process with
``CUDA_VISIBLE_DEVICES`` set to it, and a group of several GPUs runs DDP trials. Without GPUs,
``workers`` CPU workers share the cores. Pure logic: testable on a machine without GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpsearch.errors import HpsearchError


@dataclass(frozen=True)
class WorkerDevices:
    index: int
    gpus: tuple[int, ...]  # physical GPU ids; empty: CPU
    ranks: int  # processes per trial (DDP world size)
    threads: int  # torch CPU threads per rank

    @property
    def cuda_visible_devices(self) -> str | None:
        return ",".join(map(str, self.gpus)) if self.gpus else None

    def describe(self) -> str:
        where = f"CUDA_VISIBLE_DEVICES={self.cuda_visible_devices}" if self.gpus else "CPU"
        ddp = f", {self.ranks} ranks per trial (DDP)" if self.ranks > 1 else ""
        return f"worker {self.index}: {where}{ddp}, {self.threads} CPU thread(s) per rank"


def parse_gpus(text: str) -> list[int] | None:
    """``--gpus``: "0,1,3", "all" (None: every visible GPU) or "none" (CPU only)."""
    text = text.strip().lower()
    if text == "all":
        return None
    if text in ("none", ""):
        return []
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise HpsearchError(
            f"--gpus {text!r}: expected GPU ids like 0,1,2,3, 'all' or 'none'."
        ) from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise HpsearchError(f"--gpus {text!r}: GPU ids must be distinct and >= 0.")
    return ids


def assign_devices(
    *,
    gpus: Sequence[int] | None,
    visible_gpus: int,
    gpus_per_trial: int | None,
    workers: int | None,
    cores: int,
    default_ranks: int = 1,
) -> list[WorkerDevices]:
    """The node's worker processes and their devices.

    ``gpus`` None means every visible GPU; ``gpus_per_trial`` defaults to one GPU per trial (or
    to ``default_ranks``, the study's devices_per_trial); on CPU it is the ranks per trial.
    """
    chosen = list(range(visible_gpus)) if gpus is None else list(gpus)
    per_trial = gpus_per_trial or default_ranks
    if not chosen:
        count = workers or 1
        threads = max(1, cores // (count * per_trial))
        return [WorkerDevices(i, (), per_trial, threads) for i in range(count)]
    if len(chosen) % per_trial:
        raise HpsearchError(
            f"{len(chosen)} GPUs ({','.join(map(str, chosen))}) do not split into groups of "
            f"--gpus-per-trial {per_trial}; give a GPU list whose length is a multiple of it."
        )
    groups = [tuple(chosen[i : i + per_trial]) for i in range(0, len(chosen), per_trial)]
    if workers is not None and workers > len(groups):
        raise HpsearchError(
            f"--workers {workers} needs {workers * per_trial} GPUs at {per_trial} per trial, "
            f"but {len(chosen)} are given; lower --workers or add GPUs."
        )
    groups = groups[: workers or len(groups)]
    threads = max(1, cores // (len(groups) * per_trial))
    return [WorkerDevices(i, group, per_trial, threads) for i, group in enumerate(groups)]
