"""The node smoke test: before a worker takes trials, check what would make it fail them all.

The storage was reached when the study was loaded; here the devices each worker will use must
work, a built-in objective's data must be present, and the folders its trials write (checkpoints,
downloads) must be writable. A broken node then refuses to start with one clear line instead of
failing trials in bulk.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Sequence

from hpsearch.errors import HpsearchError, StorageError
from hpsearch.objectives import BUILTIN_OBJECTIVES, ObjectiveError, load_objective
from hpsearch.objectives._options import TRAINING, engine_use
from hpsearch.search.runtime._checkpoints import CACHE_FOLDER
from hpsearch.search.runtime._devices import WorkerDevices
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage import is_object_store_url, open_object_store


def _check_gpus(assignments: Sequence[WorkerDevices]) -> None:
    wanted = sorted({gpu for a in assignments for gpu in a.gpus})
    if not wanted:
        return
    import torch

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


def _check_device_option(spec: StudySpec, assignments: Sequence[WorkerDevices]) -> None:
    """``device = "cuda"`` (fixed or a choice) needs a GPU in each worker: a CPU worker would
    fail every trial the moment it moves the model."""
    if spec.objective in BUILTIN_OBJECTIVES:
        default = BUILTIN_OBJECTIVES[spec.objective].options["device"]
    elif engine_use(load_objective(spec.objective)) is not None:
        default = TRAINING["device"]
    else:
        return  # a user objective that does not declare the engine reads what it likes
    entry = spec.space.get("device")
    if entry is not None:
        devices, where = entry.get("choices", []), "[space.device]"
    else:
        devices, where = [spec.training.get("device", default)], "[training] device"
    cuda = [d for d in devices if isinstance(d, str) and d.startswith("cuda")]
    cpu_workers = [a.index for a in assignments if not a.gpus]
    if cuda and cpu_workers:
        raise HpsearchError(
            f"This node cannot run study {spec.name!r}: {where} names {cuda[0]!r} and worker "
            f"{cpu_workers[0]} gets no GPU here (none is visible, or --gpus none); start workers on a "
            'node with GPUs, or set device = "auto" (a GPU where there is one) or "cpu".'
        )


def _check_data(spec: StudySpec, *, load_all: bool = False) -> None:
    """Every dataset the study may use is there (downloaded when it may be). ``load_all``: load
    the digits set too (a worker warming up caches it; the parent only checks it ships)."""
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
    for name in choices:
        if name == "digits" and not load_all:
            # Ships inside scikit-learn: installed is present (loading it imports scikit-learn,
            # seconds of the command's start; the workers load it anyway).
            if importlib.util.find_spec("sklearn") is None:
                raise ObjectiveError(
                    "the digits dataset ships with scikit-learn, which is not installed; "
                    "install it (pip install scikit-learn) or choose another dataset."
                )
            continue
        from hpsearch.objectives.datasets import load_dataset  # torch: only for image sets

        load_dataset(
            str(name),
            str(options["data_dir"]),
            download=bool(options["download"]),
            val_fraction=float(options["val_fraction"]),
        )


def _user() -> str:
    getuid = getattr(os, "getuid", None)  # POSIX only
    return f"uid {getuid()}" if getuid is not None else "this user"


def _not_writable(folder: str) -> tuple[str, str] | None:
    """``(absolute path, why)`` if no file can be created in ``folder`` (made if missing)."""
    path = os.path.abspath(os.path.expanduser(folder))
    if os.path.exists(path) and not os.path.isdir(path):
        return path, "a file is in the way"
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".hpsearch-write-check-", dir=path)
    except OSError as err:
        return path, err.strerror or type(err).__name__
    os.close(handle)
    os.remove(probe)
    return None


def _check_folders(spec: StudySpec) -> None:
    """A built-in trial writes its checkpoint after each epoch into ``[resources] artifacts``, and
    torchvision writes into ``data_dir`` when ``download = true``: a folder this user cannot write
    (a container's root-owned directory, a read-only mount) would fail every trial, after its
    first epoch or before it. A user objective writes a checkpoint only if it chooses to: its
    folder is not checked (nor created). An ``s3://`` bucket is asked instead, whatever the
    objective: every trial's worker looks for its slot's checkpoint object there."""
    builtin = BUILTIN_OBJECTIVES.get(spec.objective)
    in_bucket = is_object_store_url(spec.resources.artifacts)
    if in_bucket:
        _check_bucket(spec)
    if builtin is None:
        return
    user = _user()
    if in_bucket:
        problem = _not_writable(CACHE_FOLDER)
        if problem is not None:
            path, why = problem
            raise HpsearchError(
                f"This node cannot run study {spec.name!r}: the checkpoint cache folder {path} "
                f"(this node's copies of the checkpoints in {spec.resources.artifacts}) is not "
                f"writable by {user} ({why}); start the workers in a folder {user} can write."
            )
    problem = None if in_bucket else _not_writable(spec.resources.artifacts)
    if problem is not None:
        path, why = problem
        raise HpsearchError(
            f"This node cannot run study {spec.name!r}: the artifacts folder {path} (checkpoints, "
            f"[resources] artifacts) is not writable by {user} ({why}); mount a writable volume "
            f"there, chown it to {user}, or set [resources] artifacts to a folder {user} can write."
        )
    options = {**builtin.options, **spec.training}
    if not options["download"]:
        return
    datasets = spec.space["dataset"].get("choices", []) if "dataset" in spec.space else []
    if {str(d) for d in datasets or [options["dataset"]]} <= {"digits"}:
        return  # scikit-learn's digits ship with it: nothing is downloaded
    problem = _not_writable(str(options["data_dir"]))
    if problem is not None:
        path, why = problem
        raise HpsearchError(
            f"This node cannot run study {spec.name!r}: the data folder {path} ([training] "
            f"data_dir, download = true) is not writable by {user} ({why}); mount a writable "
            f"volume there, chown it to {user}, set [training] data_dir to a folder {user} can "
            "write, or put the dataset files there and set download = false."
        )


def _check_bucket(spec: StudySpec) -> None:
    """The bucket of ``[resources] artifacts = "s3://..."`` answers, with these credentials."""
    try:
        open_object_store(spec.resources.artifacts).check()
    except StorageError as err:
        raise HpsearchError(f"This node cannot run study {spec.name!r}: {err}") from None


def _refusal(spec: StudySpec, err: ObjectiveError) -> HpsearchError:
    return HpsearchError(f"This node cannot run study {spec.name!r}: {err}")


def check_node(spec: StudySpec, assignments: Sequence[WorkerDevices]) -> None:
    """Raise a one-line HpsearchError/ObjectiveError if this node cannot run the study's trials.

    The devices first: the folder checks create the folders they probe, and a node refused for
    its --gpus must leave nothing behind."""
    _check_gpus(assignments)
    try:
        if spec.objective not in BUILTIN_OBJECTIVES:
            # A user's file must load here. A built-in is ours: importing it would import torch
            # into a process that never trains (seconds, and its teardown at exit).
            load_objective(spec.objective)
        _check_device_option(spec, assignments)
        _check_folders(spec)
        _check_data(spec)
    except ObjectiveError as err:
        raise _refusal(spec, err) from None


def warm_up_early(spec: StudySpec) -> None:
    """``warm_up`` in a worker the parent has not let in yet (``_launch.Gate``): the study
    file's built-in objective imported and, when nothing is downloaded (the parent's check may
    be downloading the same files), its data loaded. What fails here fails again, in one line,
    in ``warm_up`` or where the objective is loaded."""
    builtin = BUILTIN_OBJECTIVES.get(spec.objective)
    if builtin is None:  # a user's code never runs before the parent has checked the study
        return
    options = {**builtin.options, **spec.training}
    datasets = spec.space["dataset"].get("choices", []) if "dataset" in spec.space else []
    downloads = options["download"] and not {str(d) for d in datasets or [options["dataset"]]} <= {
        "digits"
    }
    with contextlib.suppress(HpsearchError, ObjectiveError):
        load_objective(spec.objective)
        if not downloads:
            warm_up(spec)


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
        _check_data(spec, load_all=True)
    except ObjectiveError as err:
        raise _refusal(spec, err) from None
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
