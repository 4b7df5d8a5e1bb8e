"""Per-rank memory of a trial's model state with strategy "ddp" against "fsdp", on CPU ranks.

The same model of about 50M parameters (an MLP of three Linear(4096, 4096) layers and a small
head, seeded) trains through the engine itself (``hpsearch.fit``, Adam, one epoch of two
optimizer steps on a tiny random dataset) on W = 2 and 4 gloo ranks, once per strategy. What is
measured is what the engine holds on each rank at the peak of the step: an optimizer step
post-hook (registered on the optimizer the engine builds from our factory, after FSDP sharded
the model) runs after ``optimizer.step()`` and before the engine's ``zero_grad(set_to_none=True)``,
so the parameters, their gradients and the Adam state (exp_avg, exp_avg_sq, step) are all alive.
Each is counted as the rank's local storage (a DTensor's ``to_local()``), two ways:

* ``allocated``: the bytes of the distinct storages those tensors keep alive (padding and shared
  buffers included): the headline figure, and the one the ratios use;
* ``logical``: numel x element size of the local tensors.

The peak is the maximum over steps and over ranks. Not counted (transient or outside the
definition): FSDP's all-gathered unsharded block during its forward/backward and its unsharded
gradient before the reduce-scatter (one block, 64 MiB each here); DDP's reducer buckets (a second
copy of the whole gradient, for the all-reduce); activations. The process RSS is recorded beside
it as a secondary figure, which includes the Python/torch runtime and, for FSDP, the whole model
as built before sharding (``ru_maxrss``).

    .venv/bin/python -m bench.fsdp_memory [--worlds 2 4] [--output bench/results/fsdp-memory.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "bench" / "results" / "fsdp-memory.json"
TARGETS = {2: 0.6, 4: 0.35}  # FSDP's peak at most this fraction of DDP's (the targets)
WIDTH, LAYERS, CLASSES, FEATURES = 4096, 3, 10, 4096
SEED = 0
STEPS = 2  # optimizer steps per run (one epoch)
PER_RANK_BATCH = 2
MIB = 2**20


def build(params: Any = None) -> nn.Module:
    """The benchmark's model (about 50.4M parameters): the same weights on every rank."""
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    width = FEATURES
    for _ in range(LAYERS):
        layers += [nn.Linear(width, WIDTH), nn.ReLU()]
        width = WIDTH
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


class StandIn:
    """The part of an Optuna trial the engine uses."""

    def __init__(self) -> None:
        self.attrs: dict[str, Any] = {}

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.attrs[key] = value


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _account(tensors: list[torch.Tensor], seen: set[int]) -> dict[str, int]:
    """Logical bytes of ``tensors`` (local shards) and the bytes of the storages they keep alive
    that are not already in ``seen`` (which is updated)."""
    logical = allocated = 0
    for tensor in tensors:
        local = _local(tensor)
        logical += local.numel() * local.element_size()
        storage = local.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            allocated += storage.nbytes()
    return {"logical": logical, "allocated": allocated}


def _rss_bytes() -> int:
    """This process's resident set now (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _measure(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad for p in params if p.grad is not None]
    state = [
        value
        for p in params
        for value in optimizer.state.get(p, {}).values()
        if isinstance(value, torch.Tensor)
    ]
    seen: set[int] = set()
    figures = {
        "params": _account(params, seen),
        "grads": _account(grads, seen),
        "optimizer": _account(state, seen),
    }
    figures["total"] = {
        kind: sum(figures[part][kind] for part in ("params", "grads", "optimizer"))
        for kind in ("logical", "allocated")
    }
    figures["grads_present"] = len(grads)
    figures["params_count"] = len(params)
    figures["rss_bytes"] = _rss_bytes()
    return figures


def _rank(rank: int, world: int, port: int, strategy: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=300),
    )
    import hpsearch

    rss_before = _rss_bytes()
    peaks: list[dict[str, Any]] = []
    built: list[torch.optim.Optimizer] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        peaks.append(_measure(optimizer))

    def adam(model: nn.Module) -> torch.optim.Optimizer:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        optimizer.register_step_post_hook(hook)
        built.append(optimizer)
        return optimizer

    batch = PER_RANK_BATCH * world
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(STEPS * batch, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (STEPS * batch,), generator=generator)
    params = {
        "strategy": strategy,
        "epochs": 1,
        "batch_size": batch,
        "lr": 1e-3,
        "optimizer": "adam",
        "device": "cpu",
        "seed": SEED,
    }
    start = time.perf_counter()
    fitted = hpsearch.fit(
        StandIn(),
        params,
        model=build,
        train=(x, y),
        val=(x[:batch], y[:batch]),
        loss=F.cross_entropy,
        optimizer=adam,
    )
    seconds = time.perf_counter() - start
    from torch.distributed.tensor import DTensor

    model_params = list(fitted.model.parameters())
    peak = max(peaks, key=lambda p: p["total"]["allocated"])
    record = {
        "rank": rank,
        "steps_measured": len(peaks),
        "peak": peak,
        "sharded_params": sum(isinstance(p, DTensor) for p in model_params),
        "model_params": len(model_params),
        "numel_local": sum(_local(p).numel() for p in model_params),
        "after_fit_grads": sum(p.grad is not None for p in model_params),
        "model_type": type(fitted.model).__name__,
        "val_loss": fitted.get("val_loss"),
        "rss_before_fit_bytes": rss_before,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "fit_seconds": seconds,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_case(world: int, strategy: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        mp.start_processes(
            _rank,
            args=(world, _free_port(), strategy, out),
            nprocs=world,
            start_method="spawn",
        )
        wall = time.perf_counter() - start
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    peak = max(ranks, key=lambda r: r["peak"]["total"]["allocated"])
    return {
        "world": world,
        "strategy": strategy,
        "peak_rank": peak["rank"],
        "peak_bytes": peak["peak"]["total"]["allocated"],
        "peak_logical_bytes": max(r["peak"]["total"]["logical"] for r in ranks),
        "parts_bytes": {k: peak["peak"][k]["allocated"] for k in ("params", "grads", "optimizer")},
        "rss_at_step_bytes": max(r["peak"]["rss_bytes"] for r in ranks),
        "ru_maxrss_bytes": max(r["ru_maxrss_bytes"] for r in ranks),
        "rss_before_fit_bytes": max(r["rss_before_fit_bytes"] for r in ranks),
        "wall_seconds": wall,
        "ranks": ranks,
    }


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def table(cases: list[dict[str, Any]], ratios: dict[int, dict[str, Any]]) -> str:
    lines = [
        "| ranks | strategy | params MiB | grads MiB | Adam state MiB | **peak total MiB** "
        "| fsdp/ddp | target | RSS at step MiB* | max RSS MiB* |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        parts = case["parts_bytes"]
        ratio = ratios.get(case["world"], {})
        shown = case["strategy"] == "fsdp" and ratio
        ratio_text = f"{ratio['ratio']:.3f}" if shown else ""
        target_text = f"<= {ratio['target']}" if shown else ""
        lines.append(
            f"| {case['world']} | {case['strategy']} | {_mib(parts['params'])} "
            f"| {_mib(parts['grads'])} | {_mib(parts['optimizer'])} "
            f"| **{_mib(case['peak_bytes'])}** "
            f"| {ratio_text} | {target_text} "
            f"| {_mib(case['rss_at_step_bytes'])} | {_mib(case['ru_maxrss_bytes'])} |"
        )
    lines.append(
        "\n*RSS: the whole process (Python/torch runtime, gloo, the model as built before "
        "sharding, DDP's buckets, activations), max over ranks; secondary."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)

    numel = sum(p.numel() for p in build().parameters())
    cases: list[dict[str, Any]] = []
    for world in args.worlds:
        for strategy in ("ddp", "fsdp"):
            case = run_case(world, strategy)
            print(
                f"W={world} {strategy}: peak {_mib(case['peak_bytes'])} MiB per rank "
                f"({case['wall_seconds']:.1f} s)",
                flush=True,
            )
            cases.append(case)
    by = {(c["world"], c["strategy"]): c for c in cases}
    ratios: dict[int, dict[str, Any]] = {}
    for world in args.worlds:
        ratio = by[world, "fsdp"]["peak_bytes"] / by[world, "ddp"]["peak_bytes"]
        target = TARGETS.get(world)
        ratios[world] = {
            "ratio": ratio,
            "logical_ratio": by[world, "fsdp"]["peak_logical_bytes"]
            / by[world, "ddp"]["peak_logical_bytes"],
            "ideal": 1 / world,
            "target": target,
            "meets_target": target is None or ratio <= target,
        }
    result = {
        "benchmark": "fsdp-memory",
        "command": ".venv/bin/python -m bench.fsdp_memory",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": {
            "description": f"MLP: {LAYERS} x Linear({WIDTH}, {WIDTH}) + ReLU, Linear({WIDTH}, "
            f"{CLASSES}); float32; seed {SEED}",
            "parameters": numel,
            "bytes": numel * 4,
        },
        "training": {
            "engine": "hpsearch.fit",
            "optimizer": "torch.optim.Adam(lr=1e-3) from fit's optimizer factory",
            "steps": STEPS,
            "per_rank_batch": PER_RANK_BATCH,
            "backend": "gloo, CPU, one thread per rank",
        },
        "measure": (
            "per rank, in an optimizer step post-hook (after step, before the engine's "
            "zero_grad): distinct storages kept alive by the local parameters, their gradients "
            "and the optimizer state (DTensors: to_local()); max over steps and ranks. Not "
            "counted: FSDP's transient unsharded block and its unsharded gradient, DDP's "
            "reducer buckets, activations. RSS figures include the whole process."
        ),
        "cases": cases,
        "ratios": {str(w): r for w, r in ratios.items()},
        "meets_targets": all(r["meets_target"] for r in ratios.values()),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"Model: {numel:,} parameters ({_mib(numel * 4)} MiB float32), Adam, {STEPS} steps.")
    print(table(cases, ratios))
    for world, r in ratios.items():
        verdict = "meets" if r["meets_target"] else "MISSES"
        print(
            f"W={world}: fsdp/ddp = {r['ratio']:.3f} (ideal {r['ideal']:.3f}), "
            f"{verdict} target <= {r['target']}"
        )
    print(f"\nWritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
