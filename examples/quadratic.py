"""A user objective: any Python function ``fn(trial, params) -> float``.

``params`` holds the values suggested from the study file's [space] merged over its [training]
options. Report one value per step to let the pruner stop bad trials early. The same shape
brings a TensorFlow, JAX or scikit-learn model: train it here and return the metric.
"""

from __future__ import annotations

from typing import Any

import optuna


def quadratic(trial: optuna.Trial, params: dict[str, Any]) -> float:
    x, y = params["x"], params.get("y", 0.0)
    loss = (x - 2.0) ** 2 + (y + 1.0) ** 2
    if params.get("shape") == "bumpy":
        loss += 0.5
    for step in range(int(params.get("steps", 3))):
        trial.report(loss + 1.0 / (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss
