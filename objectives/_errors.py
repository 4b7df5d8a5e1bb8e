from __future__ import annotations


class ObjectiveError(ValueError):
    """An objective that cannot be found or configured; the message is one line with the fix."""
