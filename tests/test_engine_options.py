"""The engine's options are checked where they are written: a misspelt name or a value that cannot
train is refused by `create` (built-ins, and user objectives declared with
``@hpsearch.uses_engine``), by ``hpsearch train``, and by ``fit`` itself before it trains."""

from __future__ import annotations

import logging
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import hpsearch
from hpsearch.errors import HpsearchError, ObjectiveError, SpecError
from hpsearch.objectives._batches import epoch_order
from hpsearch.objectives.trainer import fit
from hpsearch.search import StudySpec, parse_spec
from hpsearch.search.cli import main
from hpsearch.search.results._retrain import LocalTrial
from hpsearch.search.runtime._devices import WorkerDevices
from hpsearch.search.runtime._preflight import check_node

from .conftest import hpsearch_command

# A user objective that trains through the engine; DECLARATION decorates it (or not).
OBJECTIVE = """
import torch
import torch.nn.functional as F
import hpsearch

torch.manual_seed(0)
X = torch.randn(64, 3)
Y = X.sum(dim=1, keepdim=True)

{declaration}
def objective(trial, params):
    width = int(params.get("width", 8))
    return hpsearch.fit(
        trial,
        params,
        model=lambda p: torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 1)),
        train=(X[:48], Y[:48]),
        val=(X[48:], Y[48:]),
        loss=F.mse_loss,
        metrics={{"mse": F.mse_loss}},
    )
"""


def _objective(tmp_path: Path, declaration: str = "@hpsearch.uses_engine") -> str:
    path = tmp_path / f"engine_objective_{abs(hash(declaration))}.py"
    path.write_text(OBJECTIVE.format(declaration=declaration))
    return f"{path}:objective"


def _spec(
    objective: str,
    *,
    training: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    metric: str = "mse",
) -> StudySpec:
    study: dict[str, Any] = {"name": "engine-options", "objective": objective}
    if objective not in hpsearch.objectives.BUILTIN_OBJECTIVES:
        study.update(metric=metric, direction="minimize")
    raw = {
        "study": study,
        "budget": {"n_trials": 1},
        "space": space or {"lr": {"type": "float", "low": 1e-3, "high": 1e-1}},
        "training": training or {},
    }
    return parse_spec(raw, source="study.toml", base_dir=os.getcwd())


def _refused(objective: str, **kwargs: Any) -> str:
    with pytest.raises(SpecError) as caught:
        _spec(objective, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _trial() -> LocalTrial:
    import io

    return LocalTrial(number=0, params={}, metric="mse", epochs=None, stream=io.StringIO())


# --- 1. misspelt engine options ---


def test_create_refuses_a_misspelt_engine_option_of_a_declared_objective(tmp_path: Path) -> None:
    objective = _objective(tmp_path)
    message = _refused(objective, training={"epoch": 2})
    assert "study.toml [training]" in message and "'epoch'" in message
    assert "Did you mean 'epochs'?" in message
    message = _refused(objective, space={"batchsize": {"type": "categorical", "choices": [16, 32]}})
    assert "[space.batchsize]" in message and "Did you mean 'batch_size'?" in message
    # A name unrelated to any engine option is the objective's own, and stays allowed.
    spec = _spec(
        objective, training={"epochs": 2}, space={"width": {"type": "int", "low": 4, "high": 16}}
    )
    assert spec.training == {"epochs": 2}


def test_create_checks_a_declared_objectives_engine_values(tmp_path: Path) -> None:
    objective = _objective(tmp_path)
    message = _refused(objective, training={"optimizer": "adma"})
    assert "optimizer = 'adma' is not one of sgd, adam, adamw. Did you mean 'adam'?" in message
    message = _refused(
        objective, space={"schedule": {"type": "categorical", "choices": ["none", "cosin"]}}
    )
    assert "[space.schedule]" in message and "Did you mean 'cosine'?" in message
    assert "epochs = 0 is out of range" in _refused(objective, training={"epochs": 0})


def test_declared_own_options_close_the_set(tmp_path: Path) -> None:
    objective = _objective(tmp_path, '@hpsearch.uses_engine(options=["width"])')
    _spec(objective, training={"width": 4})
    message = _refused(objective, training={"widht": 4})
    assert "'widht' is neither an engine option nor one of the objective's own (width)" in message
    assert "Did you mean 'width'?" in message
    assert "neither an engine option" in _refused(objective, training={"colour": "red"})


def test_an_undeclared_objective_keeps_its_own_names(tmp_path: Path) -> None:
    """Without the declaration `create` cannot know what the objective reads."""
    _spec(_objective(tmp_path, ""), training={"epoch": 2, "optimizer": "lbfgs", "width": 4})


def test_fit_refuses_a_misspelt_option_before_training(tmp_path: Path) -> None:
    built: list[int] = []

    def build(params: Any) -> nn.Module:
        built.append(1)
        return nn.Linear(3, 1)

    data = (torch.randn(16, 3), torch.randn(16, 1))
    trial = _trial()
    for params, expected in (
        ({"epoch": 2}, "Did you mean 'epochs'?"),
        ({"batchsize": 8}, "Did you mean 'batch_size'?"),
        ({"optimizer": "adma"}, "Did you mean 'adam'?"),
    ):
        with pytest.raises(ObjectiveError, match=r"hpsearch\.fit params") as caught:
            fit(
                trial, params, model=build, train=data, val=data, loss=F.mse_loss, metric="val_loss"
            )
        assert expected in str(caught.value)
    assert built == [] and trial.reports == []  # nothing was built or trained
    # An own option, unrelated to the engine's names, trains.
    fitted = fit(
        trial,
        {"epochs": 1, "batch_size": 8, "width": 4},
        model=build,
        train=data,
        val=data,
        loss=F.mse_loss,
        metric="val_loss",
    )
    assert "val_loss" in fitted


def test_fit_reads_the_running_objectives_declaration() -> None:
    data = (torch.randn(16, 3), torch.randn(16, 1))

    def run(params: dict[str, Any]) -> Any:
        return fit(
            _trial(),
            params,
            model=nn.Linear(3, 1),
            train=data,
            val=data,
            loss=F.mse_loss,
            metric="val_loss",
        )

    own = hpsearch.uses_engine(options=["epoch_scale"])(lambda trial, params: run(params))
    own(None, {"epochs": 1, "batch_size": 8, "epoch_scale": 2})  # declared: allowed
    closed = hpsearch.uses_engine(options=["width"])(lambda trial, params: run(params))
    with pytest.raises(ObjectiveError, match="neither an engine option"):
        closed(None, {"epochs": 1, "batch_size": 8, "depth": 2})


def test_uses_engine_refuses_an_engine_name_as_its_own() -> None:
    with pytest.raises(ValueError, match="'lr' is an engine option already"):
        hpsearch.uses_engine(options=["lr"])


# --- 2. fsdp ---


def test_create_refuses_fsdp_with_l1(tmp_path: Path) -> None:
    message = _refused("digits-mlp", training={"strategy": "fsdp", "l1": 1e-4})
    assert 'l1 = 0.0001 cannot train with strategy = "fsdp"' in message
    message = _refused(
        "digits-mlp",
        training={"l1": 1e-4},
        space={"strategy": {"type": "categorical", "choices": ["ddp", "fsdp"]}},
    )
    assert "study.toml [training]: l1" in message
    message = _refused(
        _objective(tmp_path),
        training={"strategy": "fsdp"},
        space={"l1": {"type": "float", "low": 0.0, "high": 1e-3}},
    )
    assert "[space.l1]" in message
    _spec("digits-mlp", training={"strategy": "fsdp", "l2": 1e-4})


def test_fsdp_on_one_device_says_it_trains_unsharded(caplog: pytest.LogCaptureFixture) -> None:
    data = (torch.randn(16, 3), torch.randn(16, 1))
    with caplog.at_level(logging.WARNING, logger="hpsearch.objectives.trainer"):
        fit(
            _trial(),
            {"epochs": 2, "batch_size": 8, "strategy": "fsdp"},
            model=nn.Linear(3, 1),
            train=data,
            val=data,
            loss=F.mse_loss,
            metric="val_loss",
        )
    lines = [r.getMessage() for r in caplog.records if "fsdp" in r.getMessage()]
    assert len(lines) == 1 and "unsharded" in lines[0], lines


# --- 3. export's seed ---


@pytest.mark.slow
def test_export_shows_the_seed_a_fit_objective_trained_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    objective = _objective(tmp_path, "")
    (tmp_path / "study.toml").write_text(
        textwrap.dedent(
            f"""
            [study]
            name = "seeded"
            objective = "{objective}"
            metric = "mse"
            direction = "minimize"
            [budget]
            n_trials = 1
            [pruner]
            name = "none"
            [training]
            epochs = 1
            batch_size = 16
            device = "cpu"
            [space.lr]
            type = "float"
            low = 1e-3
            high = 1e-2
            """
        )
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["run", "study.toml", "--storage", url, "--workers", "1"]) == 0
    export = tmp_path / "best.yaml"
    assert main(["export", "--study", "seeded", "--storage", url, "-o", str(export)]) == 0
    capsys.readouterr()
    assert yaml.safe_load(export.read_text())["seed"] == 0


# --- 4. files that cannot work ---


def test_create_refuses_a_seed_beyond_64_bits() -> None:
    message = _refused("digits-mlp", training={"seed": 2**64})
    assert f"seed = {2**64} is out of range; it must be in [0, {2**64 - 1}]" in message
    _spec("digits-mlp", training={"seed": 2**64 - 1})
    # ... and the largest one trains: the epoch order's generator takes it.
    assert sorted(epoch_order(5, 2**64 - 1, 3).tolist()) == list(range(5))


def test_create_refuses_an_unknown_device(tmp_path: Path) -> None:
    message = _refused("digits-mlp", training={"device": "tpu"})
    assert "device = 'tpu' is not a device the engine trains on" in message
    assert "auto, cpu, cuda, cuda:N or mps" in message
    assert "device = 'cuad'" in _refused(_objective(tmp_path), training={"device": "cuad"})
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        _spec("digits-mlp", training={"device": device})


def test_the_node_check_refuses_cuda_on_cpu_workers(tmp_path: Path) -> None:
    cpu = [WorkerDevices(0, (), 1, 1)]
    for spec in (
        _spec("digits-mlp", training={"device": "cuda"}),
        _spec(
            _objective(tmp_path),
            space={"device": {"type": "categorical", "choices": ["cpu", "cuda:0"]}},
        ),
    ):
        with pytest.raises(HpsearchError) as caught:
            check_node(spec, cpu)
        message = str(caught.value)
        assert "\n" not in message and "worker 0 gets no GPU here" in message, message
    check_node(_spec("digits-mlp", training={"device": "cpu"}), cpu)


def test_create_refuses_a_batch_larger_than_the_builtins_data() -> None:
    # digits: 1797 rows, of which round(0.2 * 1797) = 359 validate.
    _spec("digits-mlp", training={"batch_size": 1438})
    message = _refused("digits-mlp", training={"batch_size": 1439})
    assert "batch_size = 1439 is larger than the 1438 training rows of digits" in message
    message = _refused(
        "digits-mlp", space={"batch_size": {"type": "int", "low": 1500, "high": 3000}}
    )
    assert "[space.batch_size]" in message and "1438 training rows" in message
    # A larger validation slice leaves fewer rows.
    assert "899 training rows" in _refused(
        "digits-mlp", training={"batch_size": 1000, "val_fraction": 0.5}
    )


# --- 5. hpsearch train ---


def test_train_refuses_an_unknown_training_option(tmp_path: Path) -> None:
    export = tmp_path / "best.yaml"
    document = {
        "objective": "digits-mlp",
        "metric": "val_accuracy",
        "params": {"lr": 0.01},
        "training": {"epoch": 2, "device": "cpu"},
    }
    export.write_text(yaml.safe_dump(document))
    output = tmp_path / "model"
    result = subprocess.run(
        [*hpsearch_command(), "train", str(export), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "has no option 'epoch'. Did you mean 'epochs'?" in lines[0]
    assert str(export) in lines[0]
    assert not output.exists()
