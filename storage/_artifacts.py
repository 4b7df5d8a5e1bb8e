"""Artifact stores in an S3-compatible bucket: ``[resources] artifacts = "s3://BUCKET/PREFIX"``.

Checkpoints and the dashboard's artifacts then live in one object store that every node
reaches, where a folder would need a shared filesystem. The endpoint comes from the environment
(``HPSEARCH_S3_ENDPOINT_URL``, else boto3's ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; none:
AWS itself), the credentials from boto3's usual chain (environment, profile, instance role).
Neither is ever shown: errors name the bucket, the key and the endpoint's host only.

boto3 is imported when a store is opened, never by importing this module: commands that do not
use S3 do not load it (it is the optional extra ``hpsearch[s3]``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from hpsearch.errors import StorageError
from hpsearch.storage._url import redact_text

SCHEME = "s3://"
# Ours first: it never redirects the other AWS tools of the same shell.
ENDPOINT_VARS = ("HPSEARCH_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# S3's bucket naming rules (3-63 lowercase letters, digits, '.', '-'; a letter or digit at both
# ends), which S3-compatible servers follow too.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FORM = "s3://BUCKET or s3://BUCKET/PREFIX"
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
# A folder (a sharded checkpoint) is stored as a manifest object naming one version's files.
_FOLDER_FORMAT = "hpsearch-folder/1"
_MANIFEST_START = b'{"format": "hpsearch-folder/'


def is_object_store_url(location: str) -> bool:
    """``s3://...``: an object store, not a folder."""
    return location.strip().lower().startswith(SCHEME)


@dataclass(frozen=True)
class ObjectLocation:
    """A bucket and a key prefix ("" for the bucket's root, else without slashes at its ends)."""

    bucket: str
    prefix: str

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (a path under the prefix, '/'-separated)."""
        relative = relative.strip("/")
        if not self.prefix or not relative:
            return self.prefix or relative
        return f"{self.prefix}/{relative}"

    def url(self, relative: str = "") -> str:
        key = self.key(relative)
        return f"{SCHEME}{self.bucket}/{key}" if key else f"{SCHEME}{self.bucket}"

    def child(self, relative: str) -> ObjectLocation:
        return ObjectLocation(self.bucket, self.key(relative))


def parse_object_url(url: str) -> ObjectLocation:
    """``s3://BUCKET/PREFIX`` -> its bucket and prefix; a one-line StorageError if malformed."""
    text = url.strip()
    if not is_object_store_url(text):
        raise StorageError(f"{url!r} is not an S3 URL; write it as {_FORM}.")
    bucket, _, prefix = text[len(SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"S3 URL {url!r} names no bucket; write it as {_FORM}.")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(
            f"S3 URL {url!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, "
            f"digits, '.' or '-', starting and ending with a letter or digit); write it as {_FORM}."
        )
    prefix = prefix.strip("/")
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise StorageError(
            f"S3 URL {url!r} has an empty, '.' or '..' part in its prefix {prefix!r}; write it "
            f"as {_FORM} with a plain prefix such as runs/2024."
        )
    return ObjectLocation(bucket, prefix)


def endpoint_url() -> str | None:
    """The S3-compatible endpoint from the environment (None: AWS's own)."""
    for var in ENDPOINT_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _shown_endpoint(endpoint: str | None) -> str:
    """The endpoint without whatever could be a secret in it (user info, path, query)."""
    if endpoint is None:
        return "AWS S3 (no endpoint set)"
    try:
        parts = urlsplit(endpoint)
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        if host and parts.scheme:
            return f"{parts.scheme}://{host}"
    except ValueError:  # a port that is not a number
        pass
    return f"the endpoint in {' / '.join(ENDPOINT_VARS)}"


def _scrub(text: str) -> str:
    """A library's message with any credential of the environment, and key=value secrets, hidden."""
    for var in _SECRET_VARS:
        secret = os.environ.get(var, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return redact_text(text, "").splitlines()[0] if text.strip() else text


class ObjectStore:
    """The objects under one ``s3://BUCKET/PREFIX``; keys given to it are relative to the prefix.

    Every botocore failure becomes a one-line StorageError naming the bucket and key.
    """

    def __init__(self, location: ObjectLocation, client: Any, endpoint: str | None) -> None:
        self.location = location
        self._client = client
        self._endpoint = endpoint

    @property
    def url(self) -> str:
        return self.location.url()

    @contextlib.contextmanager
    def _translate(self, action: str, relative: str = "") -> Iterator[None]:
        from boto3.exceptions import Boto3Error  # type: ignore[import-untyped]
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = self.location.url(relative)
        at = _shown_endpoint(self._endpoint)
        try:
            yield
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", "unknown"))
            if code in ("NoSuchBucket",) or (code in _NOT_FOUND and not relative):
                raise StorageError(
                    f"S3 bucket {self.location.bucket!r} does not exist at {at} (for {where}); "
                    f"create it, or fix [resources] artifacts or the endpoint ({ENDPOINT_VARS[0]})."
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(
                    f"S3 refused to {action} {where} at {at} ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and the "
                    "bucket's policy."
                ) from None
            message = _scrub(str(error.get("Message", "")))
            raise StorageError(
                f"S3 could not {action} {where} at {at}: {code} {message}".rstrip()
                + "; check the object store's log and [resources] artifacts."
            ) from None
        except EndpointConnectionError:
            raise StorageError(
                f"Cannot reach the S3 endpoint {at} to {action} {where}: nothing answers there; "
                f"start the object store, or fix {' / '.join(ENDPOINT_VARS)}."
            ) from None
        except NoCredentialsError:
            raise StorageError(
                f"No S3 credentials to {action} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials."
            ) from None
        except (BotoCoreError, Boto3Error) as err:  # Boto3Error: s3transfer's, e.g. a failed upload
            raise StorageError(
                f"S3 could not {action} {where} at {at}: {type(err).__name__}: "
                f"{_scrub(str(err))}; check the endpoint ({ENDPOINT_VARS[0]}) and the network."
            ) from None

    def check(self) -> None:
        """Raise a one-line StorageError unless the bucket answers with these credentials."""
        with self._translate("open"):
            self._client.head_bucket(Bucket=self.location.bucket)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._translate("look up", key):
            try:
                self._client.head_object(Bucket=self.location.bucket, Key=self.location.key(key))
            except ClientError as err:
                if _not_found(err):
                    return False
                raise
        return True

    def download(self, key: str, local_path: str) -> bool:
        """Fetch the object into ``local_path`` (replaced whole); False if there is no object.

        An object that is a folder's manifest (see ``upload_folder``) becomes that folder, with
        the files of the one version it names.
        """
        if not self.exists(key):
            return False
        parent = os.path.dirname(os.path.abspath(local_path))
        os.makedirs(parent, exist_ok=True)
        # Two tries more: a manifest read just before two new versions replaced it names files
        # that are gone; reading it again finds the newest.
        for _ in range(3):
            with tempfile.TemporaryDirectory(dir=parent, prefix=".download-") as scratch:
                fetched = os.path.join(scratch, "object")
                if not self._get(key, fetched):
                    return False  # deleted between the look-up and the download
                manifest = _manifest(fetched)
                if manifest is None:
                    _replace_whole(fetched, local_path)
                    return True
                folder = os.path.join(scratch, "folder")
                if self._get_folder(key, manifest, folder):
                    _replace_whole(folder, local_path)
                    return True
        raise StorageError(
            f"S3 folder {self.location.url(key)} kept changing while it was downloaded; "
            "try again once its writer has stopped."
        )

    def _get(self, key: str, local_path: str) -> bool:
        from botocore.exceptions import ClientError

        with self._translate("download", key):
            try:
                self._client.download_file(self.location.bucket, self.location.key(key), local_path)
            except ClientError as err:
                if _not_found(err):
                    return False
                raise
        return True

    def _get_folder(self, key: str, manifest: dict[str, Any], folder: str) -> bool:
        """The files of the manifest's version into ``folder``; False if one is gone."""
        versions = _versions_folder(key)
        for name in manifest["files"]:
            local = os.path.join(folder, *name.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            if not self._get(f"{versions}/{manifest['version']}/{name}", local):
                return False
        return True

    def upload_folder(self, files: Mapping[str, IO[bytes]], key: str) -> None:
        """Store a folder (its files by '/'-separated relative path, open) as the object ``key``.

        Readers see one version whole, never a mix of two: the files go under a new version
        (``KEY.versions/VERSION/``), then the small manifest at ``key`` flips to it in one PUT.
        Versions but this one and the one before it are deleted: a reader that read the
        previous manifest still finds its files.
        """
        version = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # sorts by time of writing
        versions = _versions_folder(key)
        for name, handle in sorted(files.items()):
            self.upload_fileobj(handle, f"{versions}/{version}/{name}")
        manifest = {"format": _FOLDER_FORMAT, "version": version, "files": sorted(files)}
        self.upload_fileobj(io.BytesIO(json.dumps(manifest).encode()), key)
        stored = self.keys(versions)
        named = sorted({_version_of(k, versions) for k in stored} - {version})
        doomed = set(named[:-1])  # all but the newest other version
        if doomed:
            self.delete([k for k in stored if _version_of(k, versions) in doomed])

    def upload(self, local_path: str, key: str) -> None:
        """Store the file as the object ``key`` (objects appear whole: never half of one).

        The file is opened once and read from that handle: a writer that replaces the file
        meanwhile (``os.replace``) cannot mix two versions into one object.
        """
        with self._translate("upload", key), open(local_path, "rb") as handle:
            self.upload_fileobj(handle, key)

    def upload_fileobj(self, handle: IO[bytes], key: str) -> None:
        with self._translate("upload", key):
            self._client.upload_fileobj(
                handle,
                self.location.bucket,
                self.location.key(key),
                ExtraArgs={"ContentType": "application/octet-stream"},
            )

    def keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` (a folder: relative to the store's prefix)."""
        folder = self.location.key(prefix)
        folder = f"{folder}/" if folder else ""
        strip = len(self.location.prefix) + 1 if self.location.prefix else 0
        found: list[str] = []
        with self._translate("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=folder
            )
            for page in pages:
                found += [entry["Key"][strip:] for entry in page.get("Contents", [])]
        return found

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[start : start + 1000]
            with self._translate("delete", batch[0]):
                self._client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": self.location.key(k)} for k in batch]},
                )

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under the folder ``prefix`` (``a/b`` never touches ``a/bc``)."""
        self.delete(self.keys(prefix))

    def artifact_store(self, prefix: str = "") -> PrefixedArtifactStore:
        """An Optuna artifact store (for ``upload_artifact`` and the dashboard) under ``prefix``."""
        import optuna.artifacts

        inner = optuna.artifacts.Boto3ArtifactStore(self.location.bucket, client=self._client)
        return PrefixedArtifactStore(inner, self.location.child(prefix).prefix, self)


def _versions_folder(key: str) -> str:
    """Where the versions of the folder stored as ``key`` live (beside it, not under it)."""
    return f"{key}.versions"


def _version_of(key: str, versions: str) -> str:
    return key[len(versions) + 1 :].split("/")[0]


def _manifest(path: str) -> dict[str, Any] | None:
    """The folder manifest in the file at ``path``, or None if it holds anything else."""
    with open(path, "rb") as handle:
        head = handle.read(len(_MANIFEST_START))
        if head != _MANIFEST_START:
            return None
        handle.seek(0)
        try:
            manifest: dict[str, Any] = json.loads(handle.read())
        except ValueError:
            return None
    return manifest if manifest.get("format") == _FOLDER_FORMAT else None


def _replace_whole(source: str, target: str) -> None:
    """Put ``source`` (a file or a folder) at ``target``, whatever is there now.

    A folder cannot be replaced in one step: the old one is moved aside, then removed.
    """
    if os.path.isdir(target):
        aside = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(target)), prefix=".old-")
        os.replace(target, os.path.join(aside, "old"))
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    elif os.path.isdir(source) and os.path.exists(target):
        os.remove(target)
        os.replace(source, target)
    else:
        os.replace(source, target)


def _not_found(err: Any) -> bool:
    """A botocore ClientError saying the object is not there."""
    error = err.response.get("Error", {})
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code")) in _NOT_FOUND or status == 404


class PrefixedArtifactStore:
    """Optuna's ``Boto3ArtifactStore`` with its artifacts under a key prefix (Optuna's own keeps
    them at the bucket's root). ``upload_artifact`` writes through it; the dashboard reads."""

    def __init__(self, inner: Any, prefix: str, store: ObjectStore) -> None:
        self._inner, self._prefix, self._store = inner, prefix, store

    def _key(self, artifact_id: str) -> str:
        return f"{self._prefix}/{artifact_id}" if self._prefix else artifact_id

    def open_reader(self, artifact_id: str) -> IO[bytes]:
        with self._store._translate("read the artifact", artifact_id):
            reader: IO[bytes] = self._inner.open_reader(self._key(artifact_id))
        return reader

    def write(self, artifact_id: str, content_body: IO[bytes]) -> None:
        with self._store._translate("write the artifact", artifact_id):
            self._inner.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        with self._store._translate("remove the artifact", artifact_id):
            self._inner.remove(self._key(artifact_id))


def open_object_store(url: str) -> ObjectStore:
    """The store at ``s3://BUCKET/PREFIX``, with the endpoint and credentials of the environment.

    Nothing is sent yet (``check()`` asks the bucket); a malformed URL or a missing boto3 is a
    one-line StorageError.
    """
    location = parse_object_url(url)
    try:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]
    except ImportError:
        raise StorageError(
            f"[resources] artifacts {url!r} needs boto3, which is not installed; "
            "pip install 'hpsearch[s3]' (or boto3), or use a folder."
        ) from None
    endpoint = endpoint_url()
    options: dict[str, Any] = {
        "connect_timeout": 10,
        "read_timeout": 120,
        "retries": {"max_attempts": 4, "mode": "standard"},
    }
    if endpoint is not None:
        # S3-compatible servers (MinIO, moto, Ceph) answer path-style requests; many have no
        # DNS name per bucket.
        options["s3"] = {"addressing_style": "path"}
    # A session of its own: boto3's default session is not thread-safe to create clients from.
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=Config(**options)
        )
    except ValueError:  # botocore's words for a malformed endpoint repeat it: not shown
        raise StorageError(
            f"The S3 endpoint for {url!r} ({' / '.join(ENDPOINT_VARS)}) is not a valid URL; "
            "set it to one such as http://127.0.0.1:9000."
        ) from None
    return ObjectStore(location, client, endpoint)
