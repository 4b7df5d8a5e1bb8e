"""The char-level language model as a torchrun script: ``torchrun --standalone
--nproc-per-node 2 train.py --lr 0.003`` trains it on 2 DDP ranks by hand, and
``hpsearch run examples/charlm/torchrun.toml`` runs the same command per trial (a command
objective), with the searched values filled in. ``hpsearch.connect()`` is the trial: rank 0
reports to the worker that started the script and every rank gets its decisions; run by hand, it
reports nothing. The training is ``hpsearch.fit``, which reads the torchrun process group.
"""

from __future__ import annotations

import argparse
import os
import runpy
from pathlib import Path

import torch.distributed as dist

import hpsearch

charlm = runpy.run_path(str(Path(__file__).with_name("charlm.py")))

parser = argparse.ArgumentParser()
for name, kind, default in [
    ("lr", float, 3e-3),
    ("warmup_epochs", float, 0.5),
    ("batch_size", int, 32),
    ("micro_batch", int, 16),
    ("epochs", int, 2),
    ("windows", int, 256),
    ("context", int, 64),
    ("width", int, 32),
    ("depth", int, 1),
    ("heads", int, 4),
    ("dropout", float, 0.1),
    ("schedule", str, "cosine"),
]:
    parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default)
params = vars(parser.parse_args())
params["device"] = "cpu"

if "LOCAL_RANK" in os.environ:  # started by torchrun
    dist.init_process_group("gloo")
trial = hpsearch.connect()
result = charlm["objective"](trial, params)
if not dist.is_initialized() or dist.get_rank() == 0:
    print(f"perplexity {result['perplexity']:.4f}")
if dist.is_initialized():
    dist.destroy_process_group()
