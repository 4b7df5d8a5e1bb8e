"""The ``hpsearch`` command line: one module of commands, the deployment commands, argument types."""

from __future__ import annotations

from hpsearch.search.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
