"""Where a trial's checkpoint lives, and which checkpoints are kept once trials finish.

The file is named after the trial's budget slot, which a retried trial inherits from the trial
it replaces: the retry finds its predecessor's last checkpoint and resumes from it. The folder
(``[resources] artifacts``) must be one that every node sees (a shared filesystem) for a trial
to resume on another node; or it is an S3-compatible bucket (``s3://BUCKET/PREFIX``), which
every node reaches: the objective still writes a local file (in ``hpsearch-artifacts-cache/``),
which :class:`CheckpointSync` keeps in step with its object in the bucket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import CHECKPOINT as ATTR
from hpsearch.attrs import ERROR
from hpsearch.search.results._export import best_trials
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage import (
    ObjectStore,
    StorageError,
    hot_path_of,
    is_object_store_url,
    open_object_store,
    parse_object_url,
)
from hpsearch.storage._optuna_internals import trial_id_of

log = logging.getLogger("hpsearch.checkpoints")
# A node's copies of the checkpoints kept in an object store, under the worker's directory.
CACHE_FOLDER = "hpsearch-artifacts-cache"
# What the dashboard serves a checkpoint as: mimetypes guesses .pt as a SNES page table.
CHECKPOINT_MIMETYPE = "application/octet-stream"


def _relative(spec: StudySpec, slot: int, study_uid: str, copy: str = "") -> str:
    """The slot's checkpoint, or with ``copy`` (see ``exploit_copy``) a copy waiting in the
    slot's folder for the trial that takes it."""
    return f"{spec.name}-{study_uid}/slot-{slot:06d}/{copy + '/' if copy else ''}checkpoint.pt"


def _local(spec: StudySpec, relative: str) -> str:
    artifacts = spec.resources.artifacts
    folder = os.path.abspath(CACHE_FOLDER if is_object_store_url(artifacts) else artifacts)
    return os.path.join(folder, *relative.split("/"))


def checkpoint_path(spec: StudySpec, slot: int, study_uid: str) -> str:
    """``ARTIFACTS/NAME-UID/slot-N/checkpoint.pt``: the uid keeps a re-created study of the same
    name from resuming an old study's checkpoints. With an ``s3://`` artifacts URL, the same
    path under the node's cache folder: the local copy the objective reads and writes."""
    return _local(spec, _relative(spec, slot, study_uid))


def exploit_copy(step: int, donor: int) -> str:
    """The name of population-based training's copy of ``donor``'s checkpoint as it was at the
    report ``step``, in the member's slot folder: one name per decision, so that a copy landing
    late (its worker stalled) is never taken for another decision's, nor after it was taken."""
    return f"exploit-{step:06d}-from-{donor:06d}"


_EXPLOIT_COPY = re.compile(r"exploit-(\d+)-from-\d+")


def remove_old_copies(spec: StudySpec, study_uid: str, slot: int, *, through_step: int) -> None:
    """Delete the slot's exploit copies (see ``exploit_copy``) of decisions at report
    ``through_step`` or before, as the member's continuation after that step starts: a copy is
    only ever taken by the continuation its decision queued, which has taken it by then. A copy
    that landed after it was taken, or that another decision made (its copier stalled past the
    "still current" check), would otherwise stay in the slot's folder for the member's whole
    run. Never fatal: a failure costs disk space, not the trial."""
    folder = posixpath.dirname(_relative(spec, slot, study_uid))

    def old(name: str) -> bool:
        match = _EXPLOIT_COPY.fullmatch(name)
        return match is not None and int(match.group(1)) <= through_step

    artifacts = spec.resources.artifacts
    try:
        if is_object_store_url(artifacts):
            store = _object_store(artifacts)
            keys = [k for k in store.keys(folder) if old(k[len(folder) + 1 :].split("/")[0])]
            if keys:
                store.delete(keys)
            return
        local = _local(spec, folder)
        for name in os.listdir(local) if os.path.isdir(local) else []:
            if old(name):
                shutil.rmtree(os.path.join(local, name), ignore_errors=True)
    except (StorageError, OSError) as err:
        log.warning("could not remove the old exploit copies of slot %d: %s", slot, err)


@functools.cache
def _object_store(url: str) -> ObjectStore:
    """One client per process and store: making one costs a tenth of a second."""
    return open_object_store(url)


def _object(url: str) -> tuple[ObjectStore, str]:
    """The bucket's store and the object's key for an ``s3://BUCKET/KEY`` URL."""
    location = parse_object_url(url)
    return _object_store(f"s3://{location.bucket}"), location.prefix


class CheckpointSync:
    """Keeps a trial's local checkpoint file and its object in an ``s3://`` store in step; with
    a folder for ``[resources] artifacts`` (``store`` None), every method does nothing.

    Before the trial, ``fetch`` downloads the slot's object: a retry on another node resumes from
    it. While it runs, ``changed`` (called on each heartbeat) wakes an uploader thread that
    uploads the file if it changed since its last upload: a kill -9 loses at most one heartbeat
    interval of training, and a large upload never delays a heartbeat. ``finish`` uploads the
    last version and records the object's URL as the trial's ``checkpoint``; leaving the block
    then removes the node's copy (the store holds it). Upload failures are logged, never fatal:
    the local file stays.
    """

    def __init__(self, store: ObjectStore | None, key: str, local: str) -> None:
        self._store, self.key, self.local = store, key, local
        self._lock = threading.Lock()  # one upload at a time: the uploader's or finish's
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._stored: tuple[int, int, int] | None = None  # the local version the store holds
        self._finished = False

    @property
    def store(self) -> ObjectStore | None:
        return self._store

    @property
    def url(self) -> str:
        return "" if self._store is None else self._store.location.url(self.key)

    def take(self, key: str) -> bool:
        """The object at ``key`` (a copy made for this slot) becomes the trial's checkpoint:
        downloaded into the local file, uploaded under the slot's key, then deleted; whether
        there was one. ``fetch`` is not needed after it."""
        assert self._store is not None
        with self._lock:
            if not self._store.download(key, self.local):
                return False
            with _opened(self.local) as (version, opened):
                _upload(self._store, opened, self.key)
                self._stored = version
        self._store.delete_prefix(posixpath.dirname(key))
        log.info("resuming from the checkpoint copied to %s", self.url)
        return True

    def fetch(self) -> None:
        if self._store is None:
            return
        try:
            # Under the upload lock: the uploader must not push this node's older copy over the
            # object while it is being downloaded.
            with self._lock:
                if self._store.download(self.key, self.local):
                    self._stored = _version(os.stat(self.local))
                    log.info("resuming from the checkpoint %s", self.url)
        except (StorageError, OSError) as err:
            log.warning(
                "could not fetch the checkpoint %s (%s); the trial resumes from this node's "
                "copy if it has one, else starts over",
                self.url,
                err,
            )

    def changed(self) -> None:
        self._wake.set()

    def __enter__(self) -> CheckpointSync:
        if self._store is not None:
            self._thread = threading.Thread(target=self._uploader, daemon=True)
            self._thread.start()
        return self

    def _uploader(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                self._push()
            except Exception as err:  # never fatal: the next heartbeat tries again
                log.warning("could not upload the checkpoint %s: %s", self.url, err)

    def _stop_uploader(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _push(self) -> bool:
        """Upload the local checkpoint if the store lacks this version; whether the store
        holds it. A sharded checkpoint (a folder) goes up whole: every shard, then the switch."""
        assert self._store is not None
        with self._lock:
            try:
                with _opened(self.local) as (version, opened):
                    if version != self._stored:
                        _upload(self._store, opened, self.key)
                        self._stored = version
            except FileNotFoundError:
                return self._stored is not None
            return True

    def finish(self, trial: optuna.Trial) -> None:
        """Before the trial is told: the last upload, and the object's URL on the trial."""
        if self._store is None:
            return
        self._stop_uploader()
        try:
            stored = self._push()
        except (StorageError, OSError) as err:
            log.warning(
                "could not upload the checkpoint %s (%s); it stays at %s", self.url, err, self.local
            )
            return
        if not stored:
            return  # the objective wrote no checkpoint
        try:
            trial.set_user_attr(ATTR, self.url)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # reaped meanwhile: its retry records its own
        self._finished = True

    def forget_if_unwritten(
        self, trial: optuna.Trial, path: str | None = None, storage: object = None
    ) -> None:
        """A trial whose objective wrote no checkpoint names none: status, export and the
        dashboard must not point at a file that never existed (an objective that does not
        train through ``hpsearch.fit`` usually writes none).

        ``path``: the trial's checkpoint file, when the caller knows it (else it is read from
        the trial). ``storage``: our RDB storage writes the change with the trial's end."""
        if self._finished:
            return  # uploaded: the attribute holds the object's URL
        if path is None:
            path = trial.user_attrs.get(ATTR)
        if isinstance(path, str) and not is_object_store_url(path) and not os.path.exists(path):
            fast = hot_path_of(storage)
            if fast is not None:
                fast.finish_with_user_attrs(trial_id_of(trial), {ATTR: None})
                return
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr(ATTR, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_uploader()
        if self._finished:
            shutil.rmtree(os.path.dirname(self.local), ignore_errors=True)


def _upload(store: ObjectStore, opened: BinaryIO | dict[str, BinaryIO], key: str) -> None:
    """An opened checkpoint (see ``_opened``) to the object ``key``: a folder whole."""
    if isinstance(opened, dict):
        store.upload_folder(opened, key)
    else:
        store.upload_fileobj(opened, key)


def _version(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


@contextlib.contextmanager
def _opened(
    path: str,
) -> Iterator[tuple[tuple[int, int, int], BinaryIO | dict[str, BinaryIO]]]:
    """The checkpoint at ``path`` opened for reading, with its version: a file's handle, or a
    folder's files by relative path.

    Everything is opened before anything is read: a writer that replaces the checkpoint
    meanwhile (``os.replace`` of a file, or of a whole folder of shards) cannot mix two
    versions into one upload, and the version recorded is the one uploaded. A folder being
    removed while it is opened raises FileNotFoundError: the next heartbeat tries again.
    """
    with contextlib.ExitStack() as stack:
        fd = os.open(path, os.O_RDONLY)
        version = _version(os.fstat(fd))
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            yield version, stack.enter_context(os.fdopen(fd, "rb"))
            return
        stack.callback(os.close, fd)
        files: dict[str, BinaryIO] = {}
        _open_folder(stack, fd, "", files)
        yield version, files


def _open_folder(
    stack: contextlib.ExitStack, folder: int, prefix: str, files: dict[str, BinaryIO]
) -> None:
    """Open every file under the folder ``folder`` (a descriptor), by relative path."""
    for name in sorted(os.listdir(folder)):
        fd = os.open(name, os.O_RDONLY, dir_fd=folder)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            stack.callback(os.close, fd)
            _open_folder(stack, fd, f"{prefix}{name}/", files)
        else:
            files[f"{prefix}{name}"] = stack.enter_context(os.fdopen(fd, "rb"))


def checkpoint_sync(spec: StudySpec, slot: Any, study_uid: str) -> CheckpointSync:
    """The sync of a claimed trial's checkpoint (a no-op unless artifacts is an s3:// URL)."""
    artifacts = spec.resources.artifacts
    if slot is None or not is_object_store_url(artifacts):
        return CheckpointSync(None, "", "")
    return CheckpointSync(
        _object_store(artifacts),
        _relative(spec, int(slot), study_uid),
        checkpoint_path(spec, int(slot), study_uid),
    )


def download_checkpoint(url: str, local: str) -> bool:
    """Download the checkpoint (file or sharded folder) at ``url`` to ``local``; False when
    there is none."""
    store, key = _object(url)
    return store.download(key, local)


def checkpoint_exists(location: str) -> bool:
    """Whether the checkpoint file, sharded folder or object at ``location`` is there."""
    if is_object_store_url(location):
        store, key = _object(location)
        return store.exists(key)
    return os.path.exists(location)


def _remove(trial: FrozenTrial) -> None:
    _remove_all([trial])


def _remove_all(trials: Iterable[FrozenTrial]) -> None:
    """Delete these trials' checkpoint folders; in a bucket, with one listing per study folder
    (a request per trial would grow with the study)."""
    slots: dict[tuple[str, str], set[str]] = {}  # (bucket, study folder) -> slot folders
    for trial in trials:
        path = str(trial.user_attrs.get(ATTR) or "")
        if is_object_store_url(path):
            location = parse_object_url(path)
            slot = posixpath.dirname(location.prefix)
            slots.setdefault((location.bucket, posixpath.dirname(slot)), set()).add(slot)
        elif path and os.path.exists(path):
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    for (bucket, folder), doomed in slots.items():
        store = _object_store(f"s3://{bucket}")
        # A folder's versions lie deeper than its manifest: every key under a doomed slot goes.
        keys = [k for k in store.keys(folder) if _slot_of(k, folder) in doomed]
        if keys:
            store.delete(keys)


def _slot_of(key: str, folder: str) -> str:
    """The slot folder (``FOLDER/slot-N``) of a key under a study's folder."""
    return posixpath.join(folder, key[len(folder) + 1 :].split("/")[0])


def tidy(study: optuna.Study, finished: FrozenTrial, keep: str) -> None:
    """After a trial ends: keep the checkpoints of the best trial(s), or all, or none.

    Never fatal: a failure here costs disk space or a dashboard entry, not the worker.
    """
    try:
        _tidy(study, finished, keep)
    except Exception as err:
        log.warning("could not tidy the checkpoints after trial %d: %s", finished.number, err)


def _tidy(study: optuna.Study, finished: FrozenTrial, keep: str) -> None:
    """See tidy.

    A trial that ended without a result of its own (interrupted, dead worker) keeps its
    checkpoint: its retry resumes from it.
    """
    location = str(finished.user_attrs.get(ATTR) or "")
    if keep == "all" or not location or not checkpoint_exists(location):
        return  # nothing to keep or remove (objectives that write no checkpoint end here)
    if finished.state == TrialState.FAIL and ERROR not in finished.user_attrs:
        return
    best = {t.number for t in best_trials(study)} if keep == "best" else set()
    if finished.number not in best:
        _remove(finished)
        return
    # This trial is (one of) the best now: checkpoints of earlier bests no longer are.
    _remove_all(
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.number not in best and ATTR in trial.user_attrs
    )
    _publish(study, finished)


def artifact_store_folder(spec: StudySpec) -> str:
    """The Optuna artifact store beside the checkpoints: `hpsearch dashboard --artifacts` it
    (a folder, or ``s3://BUCKET/PREFIX/store`` when the checkpoints are in a bucket)."""
    artifacts = spec.resources.artifacts
    if is_object_store_url(artifacts):
        return parse_object_url(artifacts).url("store")
    return os.path.join(os.path.abspath(artifacts), "store")


def _store(study: optuna.Study) -> Any:
    """The study's artifact store (Optuna's ArtifactStore protocol: folder or bucket)."""
    import optuna.artifacts  # imports boto3 where installed: only when publishing

    from hpsearch.search._study import SPEC_ATTR

    spec = StudySpec(study.user_attrs[SPEC_ATTR])
    if is_object_store_url(spec.resources.artifacts):
        return _object_store(spec.resources.artifacts).artifact_store("store")
    folder = artifact_store_folder(spec)
    os.makedirs(folder, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(folder)


def _artifact_name(trial: FrozenTrial) -> str:
    return f"trial-{trial.number:06d}-checkpoint.pt"


def _publish(study: optuna.Study, best: FrozenTrial) -> None:
    """Copy a best trial's checkpoint into the artifact store, so the dashboard lists it.

    It is attached to the study (a finished trial can no longer take attributes), named after
    the trial. The copies stay: the store holds every trial that was the best when it finished
    (a handful: improvements get rarer), while the checkpoint folders keep only the current best.
    Optuna has no call to delete an artifact's record, and a record without its file breaks
    `optuna.artifacts.get_all_artifact_meta`. Its type is set, not guessed: the dashboard serves
    it as a download (``mimetypes`` takes ``.pt`` for ``application/vnd.snesdev-page-table``).
    """
    import optuna.artifacts

    path = str(best.user_attrs.get(ATTR) or "")
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        named = os.path.join(folder, _artifact_name(best))
        mimetype = CHECKPOINT_MIMETYPE
        if is_object_store_url(path):
            store, key = _object(path)
            local = os.path.join(folder, "checkpoint")
            if not store.download(key, local):
                return
            path = local
        if path and os.path.isdir(path):  # a sharded checkpoint: one archive of its shards
            named = shutil.make_archive(os.path.splitext(named)[0], "zip", path)
            mimetype = "application/zip"
        elif path and os.path.exists(path):
            shutil.copyfile(path, named)
        else:
            return
        optuna.artifacts.upload_artifact(
            artifact_store=_store(study),
            file_path=named,
            study_or_trial=study,
            mimetype=mimetype,
        )


def copy_checkpoint(
    spec: StudySpec,
    study_uid: str,
    source_slot: int,
    target_slot: int,
    *,
    copy: str,
    still_current: Callable[[], bool],
) -> Literal["copied", "missing", "stale"]:
    """Copy the source slot's checkpoint into the target slot's folder under the name ``copy``
    (population-based training's exploit; ``take_copy`` makes it the target's checkpoint):
    "copied", or "missing" when the source has none.

    The source's owner may be writing it meanwhile: the copy is of one version whole (every
    file is opened before any is read, see ``_opened``), and it appears in one step.
    ``still_current`` is asked once that version is pinned (opened, or downloaded) and, on a
    file system, written beside the copy's place, just before it takes that place (in a bucket,
    before the upload): False means the version may be newer than the one the caller decided
    on, and no copy is made ("stale"). A worker that stalls after that question lands its copy
    under the same name, with the same version: never over a checkpoint a trial trains.
    In a bucket, the source object is downloaded and uploaded under the copy's key.
    """
    source = checkpoint_path(spec, source_slot, study_uid)
    target = _local(spec, _relative(spec, target_slot, study_uid, copy))
    artifacts = spec.resources.artifacts
    if is_object_store_url(artifacts):
        store = _object_store(artifacts)
        slot = checkpoint_path(spec, target_slot, study_uid)
        with tempfile.TemporaryDirectory(dir=_cache_root(slot)) as scratch:
            local = os.path.join(scratch, "checkpoint.pt")
            if not store.download(_relative(spec, source_slot, study_uid), local):
                return "missing"
            if not still_current():
                return "stale"
            with _opened(local) as (_, opened):
                _upload(store, opened, _relative(spec, target_slot, study_uid, copy))
        return "copied"
    try:
        with _opened(source) as (_, opened):
            os.makedirs(os.path.dirname(os.path.dirname(target)), exist_ok=True)
            _write_copy(opened, target, still_current)
    except FileNotFoundError:
        return "missing"
    except _Stale:
        return "stale"
    return "copied"


class _Stale(Exception):
    """A copy's source may be newer than the version decided on: the target stays as it was."""


def _cache_root(path: str) -> str:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    return folder


def _write_copy(
    opened: BinaryIO | dict[str, BinaryIO], target: str, still_current: Callable[[], bool]
) -> None:
    """Write an opened checkpoint (a file, or a folder's files) in a folder beside ``target``'s,
    then, if ``still_current()``, make it ``target``'s folder in one step (else raise
    ``_Stale``): asked last, so that the moment between the question and the swap is short
    however large the checkpoint. ``target`` names one decision's copy: a folder already there
    is another worker's copy of the same version, and stays."""
    folder = os.path.dirname(target)
    staging = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".copy-")
    try:
        written = os.path.join(staging, os.path.basename(target))
        files = opened if isinstance(opened, dict) else {"": opened}
        for relative, handle in files.items():
            path = os.path.join(written, *relative.split("/")) if relative else written
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as out:
                shutil.copyfileobj(handle, out)
        if not still_current():
            raise _Stale
        try:
            os.rename(staging, folder)
        except OSError:
            if not os.path.isdir(folder):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def take_copy(spec: StudySpec, study_uid: str, slot: int, copy: str, sync: CheckpointSync) -> bool:
    """Make the slot's copy named ``copy`` (see ``copy_checkpoint``) the slot's checkpoint,
    before its trial trains: whether there was one to take. In a bucket it is downloaded into
    the trial's local file and uploaded under the slot's key (``sync``, the trial's, then holds
    that version: no second download). Taken again after a kill part-way, it gives the same
    checkpoint, and the slot's own is not written before the caller marks the copy taken.
    """
    if sync.store is not None:
        return sync.take(_relative(spec, slot, study_uid, copy))
    target = checkpoint_path(spec, slot, study_uid)
    source = _local(spec, _relative(spec, slot, study_uid, copy))
    if not os.path.exists(source):
        return False
    # A folder is never swapped in one step (nor a file for a folder): remove the old first.
    if os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.isdir(source) and os.path.exists(target):
        os.unlink(target)
    os.replace(source, target)
    shutil.rmtree(os.path.dirname(source), ignore_errors=True)
    return True
