"""Optuna's ExperimentalWarning for the experimental features hpsearch uses on purpose
(heartbeats and their retry callback, TPE's group option, some plots).

The filter is precise: it ignores the warning only where Optuna attributes it to one of our own
modules (the caller of the experimental feature). The same warning raised by a user's code (an
objective, a notebook) is left to the user's filters.
"""

from __future__ import annotations

import warnings

# Module names the warning is attributed to: ours and nothing else (re.match: from the start).
_OURS = r"hpsearch(\.|$)"


def ignore_our_experimental_warnings() -> None:
    """Install the filter once per process (again only if someone's ``catch_warnings`` dropped
    it): adding a filter resets every module's record of the warnings it already showed."""
    from optuna.exceptions import ExperimentalWarning

    for action, _message, category, module, _line in warnings.filters:
        if (
            action == "ignore"
            and category is ExperimentalWarning
            and module is not None
            and module.pattern == _OURS
        ):
            return
    warnings.filterwarnings("ignore", category=ExperimentalWarning, module=_OURS)
