from __future__ import annotations


class StorageError(Exception):
    """A storage problem the user can fix; the message is one line and never holds a password."""


class MissingSchemaError(StorageError):
    """The database is reachable but holds no Optuna tables: no study was ever created there."""
