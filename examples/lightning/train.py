"""The Lightning model as a script: ``python train.py`` trains it by hand, ``torchrun
--standalone --nproc-per-node 2 train.py`` on two DDP ranks, and ``command.toml`` runs it per
trial as a command study. The callback connects to the worker once Lightning has formed the
process group; every rank gets the same prune and stop decisions.
"""

from __future__ import annotations

import argparse
import os
import runpy
from pathlib import Path

model = runpy.run_path(str(Path(__file__).with_name("model.py")))

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--width", type=int, default=32)
parser.add_argument("--epochs", type=int, default=4)
params = vars(parser.parse_args())
ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
mse = model["fit"](
    None, params, accelerator="cpu", devices=ranks, strategy="ddp" if ranks > 1 else "auto"
)
if int(os.environ.get("RANK", "0")) == 0:
    print(f"mse {mse:.6f}")
