"""The GPT-2 Trainer as a script: ``python train.py`` trains it by hand, ``torchrun
--standalone --nproc-per-node 2 train.py`` on two DDP ranks, and ``command.toml`` runs it per
trial as a command study. The callback connects to the worker when training begins; every rank
gets the same prune and stop decisions.
"""

from __future__ import annotations

import argparse
import os
import runpy
from pathlib import Path

gpt2 = runpy.run_path(str(Path(__file__).with_name("gpt2.py")))

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--width", type=int, default=32)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--train-bytes", type=int, default=16384)
loss = gpt2["fit"](None, vars(parser.parse_args()))
if int(os.environ.get("RANK", "0")) == 0:
    print(f"eval loss {loss:.4f}")
