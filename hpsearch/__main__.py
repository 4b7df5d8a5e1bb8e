"""``python -m hpsearch``: the same as the ``hpsearch`` command."""

from __future__ import annotations

import sys

from hpsearch.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
