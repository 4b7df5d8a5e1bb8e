from __future__ import annotations


class HpsearchError(Exception):
    """An expected failure: the CLI prints the one-line message and exits 2."""


class SpecError(HpsearchError, ValueError):
    """A study file (or stored spec) that does not validate."""
