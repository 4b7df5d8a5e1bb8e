"""Storage URL resolution and redaction."""

from __future__ import annotations

import os
import re
from urllib.parse import quote_plus, unquote_plus

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


# Query parameters whose value is (or may be) a secret: password=, passwd=, pwd=, sslpassword=,
# passfile=, token=, secret=, api_key=, ... (case-insensitive, as drivers often accept either).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)
# KEY=VALUE with a secret-looking KEY, anywhere in a string (a query string, a DSN, a message).
_SECRET_PAIR = re.compile(
    r"(?P<key>[\w.-]*(?:pass|pwd|secret|token|key|credential)[\w.-]*)(?P<eq>\s*(?:=|%3D)\s*)"
    r"(?P<value>[^&;\s'\"#]*)",
    re.IGNORECASE,
)
REDACTED = "***"


def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _query_values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else (value,)


def _redact_pairs(text: str) -> str:
    return _SECRET_PAIR.sub(lambda m: f"{m['key']}{m['eq']}{REDACTED}", text)


def _redact_unparsed(url: str) -> str:
    """Credentials in a string SQLAlchemy cannot parse (``scheme//user:pw@host``,
    ``user:pw@host``, a password holding ``@``): everything between the user's ``:`` and the
    last ``@`` becomes ``***``, as do secret-looking ``key=value`` pairs. It may hide more than
    the password, never less."""
    head, sep, rest = url.partition("//")  # '://', or the '//' of a typo such as 'scheme//'
    if not sep:
        head, rest = "", url
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user, colon, _password = credentials.partition(":")
        if colon:
            rest = f"{user}:{REDACTED}@{host}"
    return _redact_pairs(f"{head}{sep}{rest}")


def redact_url(url: str) -> str:
    """The URL as it may be shown to a user: every secret in it replaced by ``***``.

    That is the password of ``user:password@``, and the value of each query parameter that
    may hold one (``password=``, ``passwd=``, ``pwd=``, ``sslpassword=``, ``token=``, ...,
    in any case). A string SQLAlchemy cannot parse keeps only what cannot be a password.
    """
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        return _redact_unparsed(url)
    if parsed.host is not None and "@" in parsed.host:
        # An unescaped '@' in the password: SQLAlchemy took part of it for the host.
        return _redact_unparsed(url)
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    # A value may nest its own secret: libpq's ``options=-c password=...``.
    pairs = [
        f"{quote_plus(key)}="
        f"{REDACTED if _is_secret_key(key) else quote_plus(_redact_pairs(value), safe='*')}"
        for key in sorted(parsed.query)
        for value in _query_values(parsed.query[key])
    ]
    return f"{shown}?{'&'.join(pairs)}" if pairs else shown


def url_secrets(url: str) -> set[str]:
    """Every string in ``url`` that redact_url hides: passwords and secret query values, both
    as written (percent-encoded) and decoded, as a driver may quote them back."""
    found: set[str] = set()
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        parsed = None
    if parsed is not None:
        if parsed.password is not None:
            found.add(str(parsed.password))
        for key, value in parsed.query.items():
            values = _query_values(value)
            if _is_secret_key(key):
                found.update(values)
            found.update(m["value"] for v in values for m in _SECRET_PAIR.finditer(v))
    rest = url.partition("//")[2] or url
    if (parsed is None or "@" in (parsed.host or "")) and "@" in rest:
        # Not parsed, or an unescaped '@' in the password: its text form is user:PASSWORD@
        # up to the last '@' (from the first ':' on, or the last: which one is a guess), and a
        # driver may quote a piece of it (as part of the host).
        credentials = rest.rpartition("@")[0]
        if ":" in credentials:
            for password in (credentials.partition(":")[2], credentials.rpartition(":")[2]):
                found.update([password, *password.split("@")])
    found.update(m["value"] for m in _SECRET_PAIR.finditer(url))
    found.update({unquote_plus(secret) for secret in found})
    return {secret for secret in found if secret}


def redact_text(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with ``url`` shown redacted and each of its
    secrets replaced by ``***`` wherever else it appears."""

    def scrub(part: str) -> str:
        for secret in sorted(url_secrets(url), key=len, reverse=True):
            part = part.replace(secret, REDACTED)
        return _redact_pairs(part)

    if not url:
        return _redact_pairs(text)
    return redact_url(url).join(scrub(part) for part in text.split(url))


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
    if (
        not host
        or any(c in host for c in "/@?#")
        or any(c.isspace() for c in host)
        or (sep and not port_text.isdigit())
    ):
        raise StorageError(
            f"Malformed proxy URL {redact_url(url)!r}; expected grpc://HOST:PORT, e.g. grpc://proxy-host:13000 "
            "(the address `hpsearch proxy --host HOST --port PORT` listens on)."
        )
    port = int(port_text) if sep else DEFAULT_PROXY_PORT
    if not 0 < port < 65536:
        raise StorageError(
            f"Proxy port {port} in {redact_url(url)!r} is out of range; expected 1-65535."
        )
    return host, port


def dialect_of(url: str) -> str:
    """The backend name (``sqlite``, ``postgresql``, ``mysql``) or a StorageError."""
    try:
        return make_url(url).get_backend_name()
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise StorageError(
            f"Malformed storage URL {redact_url(url)!r}: {redact_text(str(err), url)}; expected e.g. "
            "sqlite:///hpsearch.db, postgresql+psycopg://user:pw@host/db or "
            "mysql+pymysql://user:pw@host/db."
        ) from None
