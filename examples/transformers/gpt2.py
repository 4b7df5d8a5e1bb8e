"""A Hugging Face ``Trainer`` tuned by hpsearch: a two-layer GPT-2 built from a config (no
weights downloaded), on the bytes of the char-level LM example's text.

``objective`` is the study's objective (``hpsearch run examples/transformers/study.toml``);
``train.py`` is the same training as a script, for torchrun and a command study on several
ranks. The callback reports each evaluation's loss once its checkpoint is saved, prunes on every
rank alike, and a retried trial resumes through the Trainer's own checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils.data import Dataset

from hpsearch.objectives.transformers import HpsearchCallback, trial_output_dir

TEXT = Path(__file__).resolve().parent.parent / "charlm" / "corpus.txt"
# The Trainer's notes, printed logs and progress bars would fill the worker's log every trial.
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger("accelerate").setLevel(logging.WARNING)


class Windows(Dataset[dict[str, torch.Tensor]]):
    """Windows of ``context`` bytes of the text (the model's tokens are bytes)."""

    def __init__(self, data: torch.Tensor, context: int) -> None:
        self.data, self.context = data, context

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.context

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.data[index * self.context : (index + 1) * self.context]
        return {"input_ids": window, "labels": window}  # the model shifts the labels itself


def data(context: int, train_bytes: int) -> tuple[Windows, Windows]:
    ids = torch.tensor(list(TEXT.read_bytes()), dtype=torch.long)
    split = int(len(ids) * 0.9)
    return Windows(ids[:split][:train_bytes], context), Windows(ids[split:], context)


def fit(trial: Any, params: dict[str, Any], output_dir: str = "gpt2-out") -> float:
    """Train the model with the Trainer; the last evaluation's loss (nats per byte)."""
    context = int(params.get("context", 64))
    config = transformers.GPT2Config(
        vocab_size=256,
        n_positions=context,
        n_embd=int(params["width"]),
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    transformers.set_seed(int(params.get("seed", 0)))
    model = transformers.GPT2LMHeadModel(config)
    train, val = data(context, int(params.get("train_bytes", 32768)))
    callback = HpsearchCallback(trial, metric="loss")
    args = transformers.TrainingArguments(
        output_dir=trial_output_dir(output_dir),
        num_train_epochs=int(params["epochs"]),
        per_device_train_batch_size=int(params["batch_size"]),
        per_device_eval_batch_size=64,
        learning_rate=float(params["lr"]),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,  # the latest checkpoint is all a retry needs
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=int(params.get("seed", 0)),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[callback]
    )
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train(resume_from_checkpoint=callback.resume_from())
    assert callback.value is not None
    return callback.value


def objective(trial: Any, params: dict[str, Any]) -> float:
    return fit(trial, params)
