"""The node smoke test: before a worker takes trials, check what would make it fail them all.

The storage was reached when the study was loaded; here the devices each worker will use must
work, and a built-in objective's data must be present. A broken node then refuses to start with
one clear line instead of failing trials in bulk.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpsearch.errors import HpsearchError
from hpsearch.objectives import BUILTIN_OBJECTIVES, ObjectiveError, load_objective
from hpsearch.search.runtime._devices import WorkerDevices
from hpsearch.search.spec._study_file import StudySpec


def _check_gpus(assignments: Sequence[WorkerDevices]) -> None:
    import torch

    wanted = sorted({gpu for a in assignments for gpu in a.gpus})
    if not wanted:
        return
    # Physical ids are checked against what this process sees (it has no CUDA_VISIBLE_DEVICES
    # restriction of its own, or the ids refer to that restriction).
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [gpu for gpu in wanted if gpu >= count]
    if missing:
        raise HpsearchError(
            f"GPU(s) {','.join(map(str, missing))} not available on this node (it sees {count}); "
            "fix --gpus, or use --gpus none for CPU workers."
        )
    for gpu in wanted:
        try:
            value = (torch.ones(4, device=f"cuda:{gpu}") * 2).sum().item()
        except RuntimeError as err:
            raise HpsearchError(f"GPU {gpu} does not work: {str(err).splitlines()[0]}") from None
        if value != 8.0:
            raise HpsearchError(f"GPU {gpu} computed 2*4 ones as {value}; the device is faulty.")


def _check_data(spec: StudySpec) -> None:
    builtin = BUILTIN_OBJECTIVES.get(spec.objective)
    if builtin is None:
        return
    options = {**builtin.options, **spec.training}
    dataset = options["dataset"]
    # A searched dataset is checked for every choice.
    if "dataset" in spec.space:
        choices = spec.space["dataset"].get("choices", [dataset])
    else:
        choices = [dataset]
    from hpsearch.objectives.datasets import load_dataset

    for name in choices:
        load_dataset(
            str(name),
            str(options["data_dir"]),
            download=bool(options["download"]),
            val_fraction=float(options["val_fraction"]),
        )


def _refusal(spec: StudySpec, err: ObjectiveError) -> HpsearchError:
    return HpsearchError(f"This node cannot run study {spec.name!r}: {err}")


def check_node(spec: StudySpec, assignments: Sequence[WorkerDevices]) -> None:
    """Raise a one-line HpsearchError/ObjectiveError if this node cannot run the study's trials."""
    try:
        load_objective(spec.objective)
        _check_data(spec)
    except ObjectiveError as err:
        raise _refusal(spec, err) from None
    _check_gpus(assignments)


def warm_up(spec: StudySpec) -> None:
    """Load in a worker, before its first claim, what its first trial would load inside it.

    A built-in objective's dataset is cached per process, and torch imports its compiler stack
    (1.5 s here) when the first optimizer is built. Paid inside trial 0, this made each worker's
    first trial several times longer than the rest, while it held a claimed slot and its
    recorded duration misled whoever read it. A user's objective module was imported when it
    was loaded; what else it loads lazily is not known here.
    """
    if spec.objective not in BUILTIN_OBJECTIVES:
        return
    try:
        _check_data(spec)
    except ObjectiveError as err:
        raise _refusal(spec, err) from None
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
