"""The effective batch, split into what one device runs at once.

The search space speaks of the effective (global) batch: the samples behind one optimizer step.
What a device can hold is a hardware fact, so the trainer splits the effective batch into
``world_size`` shards of ``accumulation`` micro-batches of ``micro`` samples each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BatchPlan:
    effective: int  # samples per optimizer step, over all devices (the searched batch_size)
    micro: int  # samples per forward/backward on one device
    accumulation: int  # micro-steps per optimizer step on each device
    world_size: int  # devices (DDP ranks) of the trial

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_batches(effective: int, *, world_size: int = 1, micro_cap: int | None = None) -> BatchPlan:
    """Split ``effective`` so that micro x accumulation x world_size == effective exactly.

    ``micro`` is the largest divisor of the per-device batch that fits under ``micro_cap``.
    """
    if effective < 1 or world_size < 1:
        raise ValueError(
            f"batch_size and world size must be >= 1, got {effective} and {world_size}"
        )
    if effective % world_size:
        raise ValueError(
            f"batch_size {effective} is not divisible by the trial's {world_size} devices; "
            f"search multiples of {world_size}"
        )
    per_device = effective // world_size
    cap = per_device if micro_cap is None else min(micro_cap, per_device)
    if cap < 1:
        raise ValueError(f"micro_batch cap must be >= 1, got {micro_cap}")
    micro = max(d for d in range(1, cap + 1) if per_device % d == 0)
    return BatchPlan(effective, micro, per_device // micro, world_size)


def halved(plan: BatchPlan) -> BatchPlan | None:
    """The next smaller plan for the same effective batch, or None below one sample."""
    if plan.micro <= 1:
        return None
    return plan_batches(plan.effective, world_size=plan.world_size, micro_cap=plan.micro // 2)
