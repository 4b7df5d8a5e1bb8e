"""Storage URL resolution and redaction."""

from __future__ import annotations

import os

import sqlalchemy.exc
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError

ENV_VAR = "HPSEARCH_STORAGE"
# The embedded default: one SQLite file in the working directory.
DEFAULT_STORAGE_URL = "sqlite:///hpsearch.db"


def resolve_storage_url(cli_value: str | None) -> str:
    """``--storage`` wins, then ``$HPSEARCH_STORAGE``, then the SQLite file ``hpsearch.db``."""
    for candidate in (cli_value, os.environ.get(ENV_VAR)):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return DEFAULT_STORAGE_URL


def redact_url(url: str) -> str:
    """The URL as it may be shown to a user: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        # Not parseable as a SQLAlchemy URL; strip anything between ':' and '@' by hand.
        scheme, sep, rest = url.partition("://")
        if not sep or "@" not in rest:
            return url
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"


PROXY_SCHEME = "grpc://"
DEFAULT_PROXY_PORT = 13000  # Optuna's own default for its gRPC storage proxy


def is_proxy_url(url: str) -> bool:
    """``grpc://HOST:PORT``: an ``hpsearch proxy`` in front of the database, not a database."""
    return url.strip().lower().startswith(PROXY_SCHEME)


def proxy_address(url: str) -> tuple[str, int]:
    """Host and port of a ``grpc://HOST[:PORT]`` URL, or a StorageError naming the fix."""
    rest = url.strip()[len(PROXY_SCHEME) :].rstrip("/")
    host, sep, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    host = host.strip("[]")  # an IPv6 literal is written grpc://[::1]:13000
    if not host or "/" in host or "@" in host or (sep and not port_text.isdigit()):
        raise StorageError(
            f"Malformed proxy URL {url!r}; expected grpc://HOST:PORT, e.g. grpc://proxy-host:13000 "
            "(the address `hpsearch proxy --host HOST --port PORT` listens on)."
        )
    port = int(port_text) if sep else DEFAULT_PROXY_PORT
    if not 0 < port < 65536:
        raise StorageError(f"Proxy port {port} in {url!r} is out of range; expected 1-65535.")
    return host, port


def dialect_of(url: str) -> str:
    """The backend name (``sqlite``, ``postgresql``, ``mysql``) or a StorageError."""
    try:
        return make_url(url).get_backend_name()
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise StorageError(
            f"Malformed storage URL {redact_url(url)!r}: {err}; expected e.g. "
            "sqlite:///hpsearch.db, postgresql+psycopg://user:pw@host/db or "
            "mysql+pymysql://user:pw@host/db."
        ) from None
