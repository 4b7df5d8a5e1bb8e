"""Who runs the trials: the budget queue, worker processes and their loop, DDP rank groups,
devices, the node's preflight, graceful stop, checkpoints and the proxy server.

Only ``_worker`` and ``_ranks`` import torch, and only inside a worker process.
"""

from __future__ import annotations

from hpsearch.search.runtime._budget import BudgetState, budget_state, reap_stale_trials
from hpsearch.search.runtime._launch import start_workers

__all__ = ["BudgetState", "budget_state", "reap_stale_trials", "start_workers"]
