"""Argument types shared by the command-line modules: bad values end in argparse's one line."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable

from hpsearch.search.spec._study_file import RESOURCE_LIMITS


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= {least}, got {text!r}"
        ) from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def resource_count(setting: str) -> Callable[[str], int]:
    """A flag that overrides the integer ``[resources]`` setting ``setting``, within the same
    bounds as the study file's (a million workers is a typo there and here alike)."""
    limit, unit = RESOURCE_LIMITS[setting]

    def parse(text: str) -> int:
        value = _whole(text, 1)
        if value > limit:
            raise argparse.ArgumentTypeError(f"expected at most {limit} ({unit}), got {value}")
        return value

    return parse


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port to listen on. 0 (any free port) is refused: the address the command prints
    for workers and browsers would not name the port it got."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return value


# One label of a host name (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host(text: str) -> str:
    """An address to bind: an IPv4 or IPv6 literal, or a host name (not resolved here)."""
    candidate = text.strip("[]") if text.startswith("[") else text
    try:
        ipaddress.ip_address(candidate)
        return candidate
    except ValueError:
        pass
    labels = candidate.rstrip(".").split(".")
    looks_numeric = all(label.isdigit() for label in labels)  # 256.1.1.1: a bad IPv4 address
    if (
        not looks_numeric
        and len(candidate) <= 253
        and ":" not in candidate
        and all(_LABEL.fullmatch(label) for label in labels)
    ):
        return candidate
    raise argparse.ArgumentTypeError(
        f"expected an IP address or host name, got {text!r}; e.g. 127.0.0.1 (this machine "
        "only), 0.0.0.0 (every interface) or a host name"
    )
