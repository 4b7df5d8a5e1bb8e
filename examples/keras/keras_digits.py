"""A TensorFlow/Keras objective: hpsearch searches, Keras trains (hpsearch's engine is not used).

An MLP on scikit-learn's digits (offline), trained data-parallel with
``tf.distribute.MirroredStrategy`` over two logical CPU devices: each step's batch is split
between two replicas whose gradients are all-reduced, as it would be over two GPUs (name the GPUs
instead where there are some). Pruning is one Keras callback: ``trial.report`` and
``trial.should_prune`` after every epoch, on the study's metric.

Needs TensorFlow: ``pip install -e '.[tensorflow]'``, then
``hpsearch run examples/keras/study.toml``.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np
import optuna
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

REPLICAS = 2  # logical CPU devices the strategy mirrors the model on

# Checked when the study file is validated, before any trial is spent on a missing package.
if importlib.util.find_spec("tensorflow") is None:
    raise ModuleNotFoundError("TensorFlow is not installed; pip install -e '.[tensorflow]'")


@functools.cache
def _tf_and_strategy() -> tuple[Any, Any]:
    """TensorFlow, and one MirroredStrategy over ``REPLICAS`` logical CPU devices.

    Once per process (a worker runs many trials): devices can only be configured before
    TensorFlow first uses them, and with a new strategy per trial the second trial in a
    process failed in its gradient all-reduce ("Shape mismatch in the collective instance",
    TensorFlow 2.21 on CPU). TensorFlow is imported here, not at the top: importing it takes
    seconds, which validating the study file should not.
    """
    import tensorflow as tf  # type: ignore[import-untyped]  # no stubs or py.typed

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(REPLICAS)]
    )
    return tf, tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and validation splits of the 8x8 digits, as float32 pixels in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    return x_train, x_val, y_train.astype("int64"), y_val.astype("int64")


def pruning_callback(trial: Any, monitor: str) -> Any:
    """A Keras callback that reports ``logs[monitor]`` each epoch and prunes when told to."""
    callback: Any = _tf_and_strategy()[0].keras.callbacks.Callback

    class ReportAndPrune(callback):  # type: ignore[misc]  # TensorFlow is untyped
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if not logs or monitor not in logs:
                raise ValueError(f"Keras logged no {monitor!r} (got {sorted(logs or {})})")
            value = float(logs[monitor])
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {monitor} {value:.4g}")

    return ReportAndPrune()


def objective(trial: Any, params: dict[str, Any]) -> dict[str, float]:
    tf, strategy = _tf_and_strategy()
    keras = tf.keras
    keras.backend.clear_session()  # the previous trial's model and layer names
    keras.utils.set_random_seed(int(params.get("seed", 0)))
    x_train, x_val, y_train, y_val = digits()
    batch_size = int(params["batch_size"])  # the global batch: split between the replicas
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {strategy.num_replicas_in_sync} "
            "replicas; search multiples of them"
        )
    with strategy.scope():  # variables created here are mirrored on every replica
        model = keras.Sequential(
            [
                keras.Input(shape=(x_train.shape[1],)),
                keras.layers.Dense(int(params["width"]), activation="relu"),
                keras.layers.Dropout(float(params["dropout"])),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=float(params["lr"])),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    history = model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=int(params["epochs"]),
        validation_data=(x_val, y_val),
        callbacks=[pruning_callback(trial, "val_accuracy")],
        verbose=0,
    )
    last = {name: float(values[-1]) for name, values in history.history.items()}
    return {"val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"]}
