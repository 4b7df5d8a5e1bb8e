"""A character-level transformer language model, tuned for validation perplexity.

A small decoder-only transformer (``nn.TransformerEncoder`` under a causal mask) reads windows
of ``context`` characters of ``corpus.txt`` (generated tales, see ``make_corpus.py``) and
predicts each next character. The first 90% of the text trains, the last 10% validates. An
"epoch" is ``windows`` windows at fixed random offsets in the training text, so its length
does not depend on the corpus; validation scores each character of the validation text once.

The study searches lr, warmup_epochs (of a cosine schedule), width, depth, dropout and the
batch size, which the engine splits into micro-batches of ``micro_batch`` windows and
accumulates. The study's metric, ``perplexity``, is exp of the mean cross-entropy per
character over the validation text.

The yardstick is the unigram model: the training text's character frequencies, with no
context at all. On the characters the validation windows score its perplexity is 22.49
(``python examples/charlm/charlm.py`` prints it); the study's four trials of six short epochs
reach 7.04 in under a minute on two CPU cores (the sampler's seed makes it repeatable, and
``hpsearch train`` retrains the best trial to the same figure). Run it with
``hpsearch run examples/charlm/study.toml``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import hpsearch

CORPUS = Path(__file__).with_name("corpus.txt")
VAL_FRACTION = 0.1
WINDOW_SEED = 0  # the training windows' offsets: the same for every trial


@functools.cache
def corpus() -> tuple[str, torch.Tensor]:
    """The vocabulary (every character of the file, sorted) and the text as its indices."""
    text = CORPUS.read_text(encoding="utf-8")
    vocab = "".join(sorted(set(text)))
    index = {char: i for i, char in enumerate(vocab)}
    return vocab, torch.tensor([index[char] for char in text], dtype=torch.long)


def split() -> tuple[torch.Tensor, torch.Tensor]:
    """The training text and the validation text (its last ``VAL_FRACTION``)."""
    _, ids = corpus()
    cut = round(len(ids) * (1 - VAL_FRACTION))
    return ids[:cut], ids[cut:]


class Windows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Windows of ``context`` characters of ``ids`` and the same shifted by one: (input, target).

    ``count`` windows at random offsets drawn once from ``seed``; without ``count``, the whole
    windows that tile ``ids`` end to end, whose targets are each character once (all but the
    first, and fewer than ``context`` at the end that fill no window).
    """

    def __init__(
        self, ids: torch.Tensor, context: int, count: int | None = None, seed: int = WINDOW_SEED
    ) -> None:
        if len(ids) <= context:
            raise ValueError(f"context {context} needs more than the text's {len(ids)} characters")
        self.ids, self.context = ids, context
        if count is None:
            self.offsets = torch.arange(0, len(ids) - context, context)
        else:
            generator = torch.Generator().manual_seed(seed)
            self.offsets = torch.randint(0, len(ids) - context, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.offsets[index])
        chunk = self.ids[start : start + self.context + 1]
        return chunk[:-1], chunk[1:]

    def targets(self) -> torch.Tensor:
        """Every character this set scores, once per window it is a target in."""
        return torch.cat([self[i][1] for i in range(len(self))])


class CharTransformer(nn.Module):
    """Embeddings (character + position), pre-norm causal transformer blocks, a linear head."""

    def __init__(
        self, vocab: int, *, context: int, width: int, depth: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=4 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors speed up padded batches of post-norm layers only; off, it does not warn.
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.drop = nn.Dropout(dropout)
        self.mask: torch.Tensor  # -inf above the diagonal: no position sees a later one
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.drop(self.embed(x) + self.position[:length])
        mask = self.mask[:length, :length]
        h = self.blocks(h, mask=mask, is_causal=True)
        logits: torch.Tensor = self.head(self.norm(h))
        return logits  # (batch, length, vocab)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss: the mean cross-entropy per character of the batch."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def cross_entropy_per_token(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each window's mean cross-entropy per character: one value per window, which the engine
    averages over the validation windows (all of one length), so the mean per character."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)


def unigram_perplexity(train: torch.Tensor, targets: torch.Tensor) -> float:
    """Perplexity on ``targets`` of the model that predicts every character with its frequency
    in ``train``: exp of the cross-entropy of the training frequencies measured on them."""
    counts = torch.bincount(train, minlength=int(targets.max()) + 1).double()
    if (counts[targets] == 0).any():
        raise ValueError("the validation text has characters the training text never uses")
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[targets].mean()))


def build(params: Mapping[str, Any]) -> nn.Module:
    vocab, _ = corpus()
    width, heads = int(params["width"]), int(params["heads"])
    if width % heads:
        raise ValueError(f"width {width} must be a multiple of heads {heads}")
    return CharTransformer(
        len(vocab),
        context=int(params["context"]),
        width=width,
        depth=int(params["depth"]),
        heads=heads,
        dropout=float(params["dropout"]),
    )


# Declared: `hpsearch create` refuses a misspelt option, and the pausing schedules and
# population-based training can resume its trials from their checkpoints.
@hpsearch.uses_engine(options=["windows", "context", "heads", "width", "depth", "dropout"])
def objective(trial: Any, params: dict[str, Any]) -> dict[str, float]:
    train, val = split()
    context = int(params["context"])
    return hpsearch.fit(
        trial,
        params,
        model=build,
        train=Windows(train, context, count=int(params["windows"])),
        val=Windows(val, context),
        loss=token_cross_entropy,
        metrics={"perplexity": hpsearch.Metric(cross_entropy_per_token, then=math.exp)},
    )


def baseline(context: int) -> float:
    """The unigram perplexity of exactly the characters the validation windows score."""
    train, val = split()
    return unigram_perplexity(train, Windows(val, context).targets())


if __name__ == "__main__":
    vocab, ids = corpus()
    print(
        f"{len(ids)} characters, {len(vocab)} distinct; unigram perplexity on the "
        f"validation text: {baseline(64):.4f}"
    )
