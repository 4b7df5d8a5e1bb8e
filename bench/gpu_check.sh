#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA GPU and hpsearch's dependencies importable:
#
#     bash bench/gpu_check.sh [OUTPUT_DIR]        (default: $OUT, else bench/results/gpu)
#
# 1. End to end on the GPU: the device plan, a digits study and a CIFAR-10 VGG study (synthetic
#    files in the real format) through `hpsearch run`, the best trial exported and retrained with
#    `hpsearch train`; the trials' states, devices and the retrained metric go to e2e.json.
# 2. bench/gpu_bench.py: the training-engine figures on the GPU (JSON; REPEATS, default 5;
#    GPU_BENCH=0 skips it).
# Each step logs to its own file; a failing step does not stop the others, the exit code says.
set -uo pipefail
out=${1:-${OUT:-bench/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
gpus=${GPUS:-all}  # GPUS=none runs the end-to-end part on a CPU (a smoke run of this script)
export PYTHONUNBUFFERED=1
hpsearch() { "$py" -m hpsearch "$@"; }
status=0
work=$(mktemp -d)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia-smi.txt" 2>&1

(
    set -x
    "$py" -c "
import sys; sys.path.insert(0, '.')
from pathlib import Path
from bench.fake_datasets import write_cifar10
write_cifar10(Path('$work/data'), per_batch=2000)
"
    sed -e 's/^n_trials = .*/n_trials = 12/' -e 's/^epochs = .*/epochs = 6/' \
        -e 's/^device = .*/device = "auto"/' studies/digits.toml >"$work/digits.toml"
    sed -e 's/^n_trials = .*/n_trials = 3/' -e 's/^epochs = .*/epochs = 2/' \
        -e "s|^data_dir = .*|data_dir = \"$work/data\"|" studies/cifar10.toml >"$work/cifar10.toml"
    for study in digits cifar10; do
        hpsearch run "$work/$study.toml" --storage "sqlite:///$work/gpu.db" --gpus "$gpus" || exit 1
    done
    hpsearch worker --study digits-mlp --storage "sqlite:///$work/gpu.db" --dry-run --gpus "$gpus"
    hpsearch export --study digits-mlp --storage "sqlite:///$work/gpu.db" --output "$work/best.yaml" || exit 1
    hpsearch train "$work/best.yaml" --output "$work/retrained" || exit 1
) >"$out/e2e.log" 2>&1 || status=1

"$py" - "$work" "$out/e2e.json" <<'EOF' >>"$out/e2e.log" 2>&1 || status=1
import json, sys
from pathlib import Path
import optuna
work, target = Path(sys.argv[1]), Path(sys.argv[2])
url = f"sqlite:///{work}/gpu.db"
summary = {}
for name in ("digits-mlp", "cifar10-vgg"):
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    summary[name] = {
        "states": {s: sum(t.state.name == s for t in trials) for s in {t.state.name for t in trials}},
        "devices": sorted({str(t.user_attrs.get("worker", {}).get("devices")) for t in trials}),
        "batch": sorted({json.dumps(t.user_attrs.get("batch")) for t in trials}),
        "median_trial_seconds": sorted(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in trials
        )[len(trials) // 2],
        "best_value": max((t.value for t in trials if t.value is not None), default=None),
    }
retrained = work / "retrained" / "config.json"
summary["retrained"] = json.loads(retrained.read_text()) if retrained.exists() else None
target.write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(json.dumps(summary, indent=2, default=str))
EOF
rm -rf "$work"

if [ "${GPU_BENCH:-1}" != 0 ]; then
    "$py" bench/gpu_bench.py --repeats "${REPEATS:-5}" --output "$out/gpu_bench.json" \
        >"$out/gpu_bench.log" 2>&1 || status=1
fi
exit $status
