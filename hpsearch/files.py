"""Files written whole or not at all: a crash or a kill never leaves half a file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; when the block succeeds, it replaces
    ``path`` in one step (``os.replace``), else it is removed. The name is unique, so two
    writers (a trial taken over elsewhere, still writing) never share a temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}-", suffix=".partial"
    )
    os.close(handle)
    try:
        yield partial
        # mkstemp makes the file private (0600); give it the mode any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
