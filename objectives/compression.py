"""Compression after training, and what the compressed model measures.

The steps run in this order, each only when its option asks for it:

1. structured pruning: the hidden neurons / conv channels with the smallest L2 norm are removed,
   so the layers are physically smaller (it changes the shapes every later step sees);
2. low-rank factorisation: each hidden Linear ``W`` (out x in) becomes two Linears from its
   truncated SVD, only where that has fewer parameters;
3. global unstructured L1 magnitude pruning over every Linear/Conv weight (factors included),
   the last weight edit, so that no later edit refills the zeros;
4. fine-tuning (``finetune_epochs``) with the pruning masks held fixed by torch.nn.utils.prune's
   reparametrisation; then the masks are made permanent;
5. dynamic int8 quantization of the Linear layers (CPU only; not trainable, hence last).

Then the model is measured: validation accuracy, non-zero parameters, bytes of its saved
state_dict (:func:`serialize`: weights that are mostly zeros are stored as CSR, so unstructured
pruning shows on disk), and the median latency of one validation batch.

``hpsearch train`` reproduces a trial's compressed model by training it as the objective does and
calling :func:`compress` with ``CompressionRecipe.from_options(options)``; :func:`serialize` gives
the bytes to save (the same bytes that ``size_bytes`` counts) and :func:`load_serialized` reads
them back into a model of the same architecture.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from hpsearch import attrs
from hpsearch.objectives._choices import QUANTIZE_MODES
from hpsearch.objectives._placement import autocast
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.schedules import ScheduleConfig
from hpsearch.objectives.trainer import TrainConfig, TrialLike, evaluate, train_classifier

# Fine-tuning restarts from trained weights: a tenth of the training learning rate, constant,
# so that the first steps do not undo what training found.
FINETUNE_LR_FACTOR = 0.1
LATENCY_BATCH = 256
LATENCY_WARMUP = 3
LATENCY_REPEATS = 20
_INDEX_BYTES = 4  # CSR indices are stored as int32


@dataclass(frozen=True)
class CompressionRecipe:
    """What to do to a trained model; every step is off by default."""

    prune_amount: float = 0.0  # fraction of Linear/Conv weights set to zero (global, by |w|)
    prune_structured: float = 0.0  # fraction of hidden neurons / conv channels removed
    low_rank: float = 0.0  # 0: off; else the kept rank as a fraction of min(out, in)
    quantize: str = "none"  # "none" or "dynamic-int8"
    finetune_epochs: int = 0  # after pruning / low-rank, before quantization

    def __post_init__(self) -> None:
        for name in ("prune_amount", "prune_structured"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 <= self.low_rank <= 1.0:
            raise ValueError(
                f"low_rank must be 0 (off) or a rank fraction in (0, 1], got {self.low_rank}"
            )
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(
                f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}"
            )
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CompressionRecipe:
        """The recipe inside an objective's options (missing entries: off)."""
        defaults = cls()
        return cls(
            prune_amount=float(options.get("prune_amount", defaults.prune_amount)),
            prune_structured=float(options.get("prune_structured", defaults.prune_structured)),
            low_rank=float(options.get("low_rank", defaults.low_rank)),
            quantize=str(options.get("quantize", defaults.quantize)),
            finetune_epochs=int(options.get("finetune_epochs", defaults.finetune_epochs)),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def edits_weights(self) -> bool:
        """Whether a step runs that fine-tuning can repair."""
        return self.prune_amount > 0 or self.prune_structured > 0 or self.low_rank > 0


def check_device(recipe: CompressionRecipe, device: torch.device) -> None:
    """Refuse before training what cannot run after it."""
    if recipe.quantize == "dynamic-int8" and device.type != "cpu":
        raise ValueError(
            f"quantize = 'dynamic-int8' runs on CPU only (PyTorch's dynamic int8 kernels), but "
            f"this trial trains on {device}; set device = 'cpu' in [training], or quantize = 'none'"
        )


# --- the steps -------------------------------------------------------------------------------

_Weighted = nn.Linear | nn.Conv2d


def _weighted_layers(model: nn.Module) -> list[_Weighted]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _out_size(layer: _Weighted) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_size(layer: _Weighted) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _keep_outputs(layer: _Weighted, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


def _keep_inputs(layer: _Weighted, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[:, keep].clone())
    if isinstance(layer, nn.Linear):
        layer.in_features = len(keep)
    else:
        layer.in_channels = len(keep)


def _keep_norm(norm: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    if norm.weight is not None and norm.bias is not None:
        norm.weight = nn.Parameter(norm.weight.detach()[keep].clone())
        norm.bias = nn.Parameter(norm.bias.detach()[keep].clone())
    if norm.running_mean is not None and norm.running_var is not None:
        norm.running_mean = norm.running_mean[keep].clone()
        norm.running_var = norm.running_var[keep].clone()
    norm.num_features = len(keep)


def prune_structured(model: nn.Module, amount: float) -> list[int]:
    """Remove ``amount`` of each hidden layer's outputs (neurons / channels) by L2 norm.

    The model must be a chain in module order (as MLP and VGG are): each Linear/Conv feeds the
    next, with only per-channel modules (activations, pooling, BatchNorm, dropout) in between.
    The output layer keeps its size. Returns the hidden sizes after pruning.
    """
    items = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.BatchNorm2d)]
    layers = _weighted_layers(model)
    sizes: list[int] = []
    for index, (layer, following) in enumerate(itertools.pairwise(layers)):
        size = _out_size(layer)
        if _in_size(following) != size or getattr(following, "groups", 1) != 1:
            raise ValueError(
                f"structured pruning needs a plain chain of layers; layer {index} gives {size} "
                f"outputs but the next one takes {_in_size(following)} inputs"
            )
        norms = layer.weight.detach().reshape(size, -1).norm(dim=1)
        n_keep = max(1, round(size * (1.0 - amount)))
        keep = norms.topk(n_keep).indices.sort().values
        _keep_outputs(layer, keep)
        between = items[items.index(layer) + 1 : items.index(following)]
        for norm in between:
            assert isinstance(norm, nn.BatchNorm2d)  # only norms lie between two weighted layers
            _keep_norm(norm, keep)
        _keep_inputs(following, keep)
        sizes.append(n_keep)
    return sizes


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def factorize_low_rank(model: nn.Module, fraction: float) -> list[dict[str, int]]:
    """Replace each hidden Linear by two Linears of rank ``round(fraction * min(out, in))``.

    The output layer stays whole (it is small and the most sensitive). A layer is replaced only
    where the two factors hold fewer parameters than the original; the replacement keeps the
    layer's input and output sizes. Returns one ``{in, out, rank}`` per replaced layer.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    replaced: list[dict[str, int]] = []
    for name, layer in linears[:-1]:
        out_size, in_size = layer.weight.shape
        rank = max(1, round(fraction * min(out_size, in_size)))
        if rank * (in_size + out_size) >= in_size * out_size:
            continue
        weight = layer.weight.detach()
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        root = s[:rank].sqrt()
        kwargs: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
        first = nn.Linear(in_size, rank, bias=False, **kwargs)
        second = nn.Linear(rank, out_size, bias=layer.bias is not None, **kwargs)
        with torch.no_grad():
            first.weight.copy_(root[:, None] * vh[:rank])
            second.weight.copy_(u[:, :rank] * root)
            if layer.bias is not None:
                second.bias.copy_(layer.bias)
        parent, attr = _parent(model, name)
        setattr(parent, attr, nn.Sequential(first, second))
        replaced.append({"in": in_size, "out": out_size, "rank": rank})
    return replaced


def prune_magnitude(model: nn.Module, amount: float) -> None:
    """Mask the ``amount`` smallest |w| over all Linear/Conv weights (masks stay until
    :func:`make_pruning_permanent`, so that fine-tuning keeps the zeros at zero)."""
    targets = [(layer, "weight") for layer in _weighted_layers(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)


def make_pruning_permanent(model: nn.Module) -> None:
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")  # type: ignore[no-untyped-call]


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Int8 weights for every Linear (activations quantized on the fly); a new CPU model."""
    model.eval()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (pytorch/ao#2259), which is
        # not a dependency of this project; the eager API still works in this torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model.cpu(), {nn.Linear}, dtype=torch.qint8
        )
    return quantized


# --- measurements ----------------------------------------------------------------------------


def count_nonzero_parameters(model: nn.Module) -> int:
    """Non-zero weights and biases, int8-quantized Linears included (their weights are packed
    outside ``parameters()``)."""
    total = sum(int(p.detach().count_nonzero()) for p in model.parameters())
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            total += int(module.weight().dequantize().count_nonzero())  # type: ignore[no-untyped-call]
            bias = module.bias()  # type: ignore[no-untyped-call]
            total += 0 if bias is None else int(bias.count_nonzero())
    return total


def _compact(value: Any) -> Any:
    """A float matrix or kernel that is mostly zeros, as CSR with int32 indices; else as is."""
    if (
        not isinstance(value, torch.Tensor)
        or value.is_quantized
        or value.layout != torch.strided
        or not value.is_floating_point()
        or value.ndim < 2
    ):
        return value
    rows = value.shape[0]
    nonzero = int(value.count_nonzero())
    dense_bytes = value.numel() * value.element_size()
    csr_bytes = nonzero * (value.element_size() + _INDEX_BYTES) + (rows + 1) * _INDEX_BYTES
    if csr_bytes >= dense_bytes:
        return value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        matrix = value.detach().cpu().reshape(rows, -1).to_sparse_csr()
        return torch.sparse_csr_tensor(
            matrix.crow_indices().to(torch.int32),
            matrix.col_indices().to(torch.int32),
            matrix.values(),
            size=matrix.shape,
        )


def serialize(model: nn.Module) -> bytes:
    """The model's state_dict as ``torch.save`` writes it; ``size_bytes`` is its length."""
    # Changed in place: the state_dict's _metadata (module versions) must travel with it, or
    # int8 layers load as their old format and fail.
    state = model.state_dict()
    for key, value in state.items():
        state[key] = _compact(value)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_serialized(model: nn.Module, blob: bytes) -> nn.Module:
    """Load :func:`serialize`'s bytes into ``model`` (of the same, compressed, architecture)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse validation and storage notices
        state = torch.load(io.BytesIO(blob), weights_only=True)
        shapes = {
            key: value.shape
            for key, value in model.state_dict().items()
            if isinstance(value, torch.Tensor)
        }
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.layout == torch.sparse_csr:
                state[key] = value.to_dense().reshape(shapes[key])
    model.load_state_dict(state)
    return model


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    amp: str = "off",
    warmup: int = LATENCY_WARMUP,
    repeats: int = LATENCY_REPEATS,
) -> float:
    """Median milliseconds of one forward pass of ``batch`` on its device, after warm-up."""
    model.eval()
    sync: Callable[[], None] = (
        torch.cuda.synchronize if batch.device.type == "cuda" else (lambda: None)
    )
    times: list[float] = []
    with autocast(batch.device, amp):
        for index in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(batch)
            sync()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def measure(model: nn.Module, data: TensorDataset, *, amp: str = "off") -> dict[str, float | int]:
    """val_accuracy, params (non-zero), size_bytes and latency_ms of ``model`` as it is now."""
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    return {"val_accuracy": evaluate(model, x_val, y_val, amp=amp), **_footprint(model, x_val, amp)}


def _footprint(model: nn.Module, x_val: torch.Tensor, amp: str) -> dict[str, float | int]:
    return {
        "params": count_nonzero_parameters(model),
        "size_bytes": len(serialize(model)),
        "latency_ms": latency_ms(model, x_val[:LATENCY_BATCH], amp=amp),
    }


def fixed_measurements(
    model: nn.Module, data: TensorDataset, recipe: CompressionRecipe, *, amp: str = "off"
) -> dict[str, float | int]:
    """params, size_bytes and latency_ms of the untrained ``model`` compressed as ``recipe``
    says: what the trained model will measure, known before training.

    The recipe fixes them, not the weights' values: the layers' shapes, the count of zeros and
    the int8 storage are the same after training. Nearly: global magnitude pruning spreads its
    zeros over the layers by the weights' values, and a layer is stored sparse by its own count
    (the size moves by up to about 10%), and int8 rounds some small trained weights to zero (the
    non-zero count). The latency is a measurement like the final one, with the same noise.
    """
    _restructure(model, recipe)
    model, amp = _finish(model, recipe, amp)
    return _footprint(model, data.x_val, amp)  # the data is on the model's device


def compressed_accuracy(
    model: nn.Module, data: TensorDataset, recipe: CompressionRecipe, *, amp: str = "off"
) -> float:
    """val_accuracy of a copy of ``model`` compressed now as ``recipe`` says (no fine-tuning);
    ``model`` is left as it is.

    What the Pareto pruner compares each epoch in a compression study: the study's accuracy is
    the compressed model's, and a recipe can cost most of it (a trained model at 0.97 scoring 0.3
    once pruned), so the uncompressed model's curve says little about where a trial will end.
    """
    probe = copy.deepcopy(model)
    _restructure(probe, recipe)
    probe, amp = _finish(probe, recipe, amp)
    return evaluate(probe, data.x_val, data.y_val, amp=amp)


def _restructure(model: nn.Module, recipe: CompressionRecipe) -> dict[str, Any]:
    """The recipe's pruning and factorization, in place; what was done."""
    done: dict[str, Any] = {}
    if recipe.prune_structured > 0:
        done["hidden_sizes"] = prune_structured(model, recipe.prune_structured)
    if recipe.low_rank > 0:
        done["low_rank_layers"] = factorize_low_rank(model, recipe.low_rank)
    if recipe.prune_amount > 0:
        prune_magnitude(model, recipe.prune_amount)
    return done


def _finish(model: nn.Module, recipe: CompressionRecipe, amp: str) -> tuple[nn.Module, str]:
    """The pruning masks made permanent and the recipe's quantization: the model as stored."""
    make_pruning_permanent(model)
    if recipe.quantize == "dynamic-int8":
        return quantize_dynamic_int8(model), "off"
    return model, amp


class _AfterTraining:
    """The trial seen by fine-tuning: epochs continue the training's numbering, and nothing
    prunes (the pruner compares training curves; a freshly pruned model's dip is not one)."""

    def __init__(self, trial: TrialLike, offset: int) -> None:
        self._trial = trial
        self._offset = offset

    def report(self, value: float, step: int) -> None:
        self._trial.report(value, step + self._offset)

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self._trial.set_user_attr(key, value)


def compress(
    model: nn.Module,
    data: TensorDataset,
    recipe: CompressionRecipe,
    *,
    train_config: TrainConfig,
    trial: TrialLike,
) -> tuple[nn.Module, dict[str, float | int]]:
    """Compress a trained ``model`` as ``recipe`` says; the compressed model and its measurements.

    Records on the trial what was done (user attribute ``compression``) and every measurement
    (user attributes ``val_accuracy``, ``params``, ``size_bytes``, ``latency_ms``).
    """
    check_device(recipe, data.x_val.device)
    done: dict[str, Any] = {"recipe": recipe.as_dict(), **_restructure(model, recipe)}
    if recipe.finetune_epochs > 0 and recipe.edits_weights:
        finetune = dataclasses.replace(
            train_config,
            epochs=recipe.finetune_epochs,
            lr=train_config.lr * FINETUNE_LR_FACTOR,
            schedule=ScheduleConfig(),
            compile=False,  # a short run on a changed model: compiling would cost more than it saves
            checkpoint=None,  # the training's checkpoint is of the uncompressed model
        )
        train_classifier(_AfterTraining(trial, train_config.epochs), model, data, finetune)
        done["finetuned_epochs"] = recipe.finetune_epochs
    make_pruning_permanent(model)
    if recipe.prune_amount > 0:
        weights = [layer.weight.detach() for layer in _weighted_layers(model)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        done["sparsity"] = round(zeros / sum(w.numel() for w in weights), 4)
    model, amp = _finish(model, recipe, train_config.amp)
    measurements = measure(model, data, amp=amp)
    trial.set_user_attr(attrs.COMPRESSION, done)
    for key, value in measurements.items():
        trial.set_user_attr(key, value)
    return model, measurements
