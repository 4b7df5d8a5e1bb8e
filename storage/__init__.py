"""Where study state lives: storage URLs, SQL engines, and the errors they raise.

Nothing here knows about search spaces or training; ``search`` builds on these names.
"""

from __future__ import annotations

from storage._errors import MissingSchemaError, StorageError
from storage._rdb import (
    StorageSettings,
    create_schema,
    describe_driver_error,
    open_storage,
    translate_errors,
)
from storage._url import DEFAULT_STORAGE_URL, ENV_VAR, redact_url, resolve_storage_url

__all__ = [
    "DEFAULT_STORAGE_URL",
    "ENV_VAR",
    "MissingSchemaError",
    "StorageError",
    "StorageSettings",
    "create_schema",
    "describe_driver_error",
    "open_storage",
    "redact_url",
    "resolve_storage_url",
    "translate_errors",
]
