"""Where study state lives: storage URLs, SQL engines, artifact stores, and their errors.

Nothing here knows about search spaces or training; ``search`` builds on these names.
"""

from __future__ import annotations

from hpsearch.errors import MissingSchemaError, StorageError
from hpsearch.storage._artifacts import (
    ObjectLocation,
    ObjectStore,
    PrefixedArtifactStore,
    is_object_store_url,
    open_object_store,
    parse_object_url,
)
from hpsearch.storage._hot_path import HotPath, hot_path_of
from hpsearch.storage._proxy import (
    ProxyStorage,
    WorkerStorage,
    apply_worker_settings,
    close_storage,
    open_worker_storage,
    start_proxy_server,
)
from hpsearch.storage._rdb import (
    StorageSettings,
    create_schema,
    describe_driver_error,
    import_storage_modules,
    open_storage,
    sqlite_file,
    translate_errors,
)
from hpsearch.storage._url import (
    DEFAULT_STORAGE_URL,
    ENV_VAR,
    is_proxy_url,
    redact_url,
    resolve_storage_url,
)

__all__ = [
    "DEFAULT_STORAGE_URL",
    "ENV_VAR",
    "HotPath",
    "MissingSchemaError",
    "ObjectLocation",
    "ObjectStore",
    "PrefixedArtifactStore",
    "ProxyStorage",
    "StorageError",
    "StorageSettings",
    "WorkerStorage",
    "apply_worker_settings",
    "close_storage",
    "create_schema",
    "describe_driver_error",
    "hot_path_of",
    "import_storage_modules",
    "is_object_store_url",
    "is_proxy_url",
    "open_object_store",
    "open_storage",
    "open_worker_storage",
    "parse_object_url",
    "redact_url",
    "resolve_storage_url",
    "sqlite_file",
    "start_proxy_server",
    "translate_errors",
]
