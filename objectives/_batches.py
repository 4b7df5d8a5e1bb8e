"""The data paths: a trial's batches from preloaded tensors, a Dataset or an IterableDataset.

Data comes as preloaded tensors ``(x, y)`` (steps are index lookups on the device, the fast
path), a map-style ``torch.utils.data.Dataset`` of ``(input, target)`` pairs (a DataLoader with
workers and pinned memory; each rank loads its shard of each step) or an ``IterableDataset``
(one device). Each epoch's order comes from the seed and the epoch alone, so a resumed trial
replays exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from hpsearch.objectives._train_config import TrainConfig
from hpsearch.objectives.batching import BatchPlan


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, tuple | list):
        return type(batch)(map_tensors(item, fn) for item in batch)
    if isinstance(batch, dict):
        return {key: map_tensors(value, fn) for key, value in batch.items()}
    return batch


def batch_rows(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    found: list[int] = []
    map_tensors(batch, lambda t: found.append(len(t)))
    if not found:
        raise ValueError("a batch holds no tensor; the data must yield (input, target) tensors")
    return found[0]


def split(batch: Any, micro: int) -> list[Any]:
    """A device's batch as micro-batches of ``micro`` samples."""

    def part(k: int) -> Any:
        return map_tensors(batch, lambda t: t[k * micro : (k + 1) * micro])

    return [part(k) for k in range(math.ceil(batch_rows(batch) / micro))]


def to_device(batch: Any, device: torch.device) -> Any:
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def pair(batch: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(
            f"{where} must yield (input, target) pairs, got a {type(batch).__name__}; "
            "return `x, y` from the Dataset's __getitem__"
        )
    return batch[0], batch[1]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: from the seed and the epoch alone, so that every rank agrees
    and a resumed trial replays the epoch it stopped in."""
    # Modulo 2**64, the generator's seed width: any 64-bit seed works (smaller ones unchanged).
    mixed = (seed * 100_003 + epoch) % 2**64
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed))


class _Steps(torch.utils.data.Sampler[list[int]]):
    """One rank's share of each optimizer step of one epoch, as index lists (a batch sampler)."""

    def __init__(self, order: torch.Tensor, plan: BatchPlan, rank: int, steps: range) -> None:
        self.order, self.plan, self.rank, self.steps = order, plan, rank, steps

    def __iter__(self) -> Iterator[list[int]]:
        per_device = self.plan.effective // self.plan.world_size
        for step in self.steps:
            start = step * self.plan.effective + self.rank * per_device
            yield self.order[start : start + per_device].tolist()

    def __len__(self) -> int:
        return len(self.steps)


class Data:
    """Where a trial's batches come from: preloaded tensors, a Dataset, or an iterable."""

    def __init__(self, data: Any, *, name: str, device: torch.device, cfg: TrainConfig) -> None:
        self.name, self.device, self.cfg = name, device, cfg
        self.tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dataset: Dataset[Any] | None = None
        self.iterable: IterableDataset[Any] | None = None
        if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
            data = data.tensors
        if isinstance(data, IterableDataset):
            self.iterable = data
        elif (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            x, y = data
            if len(x) != len(y):
                raise ValueError(f"{name}: x has {len(x)} rows and y {len(y)}; they must match")
            self.tensors = (x.to(device), y.to(device))
        elif isinstance(data, Dataset):
            self.dataset = data
        else:
            raise ValueError(
                f"{name} must be a torch Dataset, an IterableDataset or a pair of tensors (x, y), "
                f"got a {type(data).__name__}"
            )

    def __len__(self) -> int:
        if self.tensors is not None:
            return len(self.tensors[0])
        if self.dataset is not None:
            return len(self.dataset)  # type: ignore[arg-type]
        raise TypeError("an IterableDataset has no length")

    @property
    def sized(self) -> bool:
        return self.iterable is None

    def _loader(self, **kwargs: Any) -> DataLoader[Any]:
        workers = self.cfg.loader_workers
        return DataLoader(
            kwargs.pop("dataset"),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            **kwargs,
        )

    def steps(
        self, epoch: int, plan: BatchPlan, rank: int, first: int, count: int
    ) -> Iterator[Any]:
        """This rank's batch of each optimizer step ``first..count-1`` of ``epoch``, on device."""
        if self.iterable is not None:
            loader = self._loader(dataset=self.iterable, batch_size=plan.effective, drop_last=True)
            for step, batch in enumerate(loader):
                if step >= first:
                    yield to_device(batch, self.device)
            return
        order = epoch_order(len(self), self.cfg.seed, epoch)
        if self.tensors is not None:
            per_device = plan.effective // plan.world_size
            order = order.to(self.device)
            x, y = self.tensors
            for step in range(first, count):
                start = step * plan.effective + rank * per_device
                index = order[start : start + per_device]
                yield x[index], y[index]
            return
        sampler = _Steps(order, plan, rank, range(first, count))
        for batch in self._loader(dataset=self.dataset, batch_sampler=sampler):
            yield to_device(batch, self.device)

    def evaluation(self, rank: int, world: int, rows: int) -> Iterator[Any]:
        """This rank's shard of the data, in batches of ``rows``."""
        if self.iterable is not None:
            yield from (
                to_device(b, self.device)
                for b in self._loader(dataset=self.iterable, batch_size=rows)
            )
        elif self.tensors is not None:
            x, y = (t[rank::world] for t in self.tensors)
            for start in range(0, len(x), rows):
                yield x[start : start + rows], y[start : start + rows]
        else:
            assert self.dataset is not None
            shard = torch.utils.data.Subset(self.dataset, range(rank, len(self), world))
            for batch in self._loader(dataset=shard, batch_size=rows):
                yield to_device(batch, self.device)
