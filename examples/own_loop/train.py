"""The loop of ``loop.py`` as a script of its own: ``python train.py --lr 0.003`` trains it by
hand, ``torchrun --nproc-per-node 2 train.py`` on two DDP ranks, and a study runs it per trial
as a command (``command.toml``), unchanged. ``hpsearch.connect()`` is the trial: rank 0 reports
to the worker that started the script, every rank gets its decisions; run by hand it reports
nothing and prunes nothing.
"""

from __future__ import annotations

import argparse
import os
import runpy
from pathlib import Path

import torch.distributed as dist

import hpsearch

objective = runpy.run_path(str(Path(__file__).with_name("loop.py")))["objective"]

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.003)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--width", type=int, default=32)
parser.add_argument("--epochs", type=int, default=6)
args = parser.parse_args()

if "LOCAL_RANK" in os.environ:  # started by torchrun
    dist.init_process_group("gloo")
trial = hpsearch.connect()
params = {"lr": args.lr, "batch_size": args.batch_size, "width": args.width, "epochs": args.epochs}
mse = objective(trial, params)
if not dist.is_initialized() or dist.get_rank() == 0:
    print(f"mse {mse:.6f}")
if dist.is_initialized():
    dist.destroy_process_group()
