#!/usr/bin/env bash
# Issue #14's GPU benchmarks in one run on a lent GPU machine (README, "Benchmarks on a lent GPU"):
# installs the kit that bench/device_kit.sh put in .whl/ into /tmp/site, prints the versions, then
# runs each bench under its own timeout (about 9 minutes in all), going on when one fails. Each
# bench's output goes to $OUT/NAME.txt; the last lines say how each ended.
#
#   bash bench/gpu_check.sh                # there (the device tool: carry [".whl"], timeout_s 600)
#   bash bench/gpu_check.sh queue_latency  # only the benches named (a rerun on a machine still warm)
#   PYTHON=/tmp/devsim/bin/python bash bench/gpu_check.sh --cpu-smoke   # a dry run without a GPU
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
python=${PYTHON:-python3}  # the device image's python3 holds torch
out=${OUT:-/tmp/gpu_check}
site=/tmp/site
mkdir -p "$out"
smoke=false
if [[ ${1:-} == --cpu-smoke ]]; then smoke=true; shift; fi
wanted=" $* "  # the benches to run, all when none is named

"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl || exit 1
# The repository, the kit, then the stand-ins for what audiocraft imports and the benches never use.
export PYTHONPATH=$PWD:$site:$PWD/bench/device_stubs PYTHONUNBUFFERED=1

set_up() {  # versions, every import the benches need, and librosa's numba code compiled once
    nvidia-smi -L
    "$python" - <<'EOF' || return
import importlib.metadata as metadata
import sys

import torch

import bench.decode
import bench.gpu
import bench.queue_latency

device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), {device}")
names = ("numpy", "scipy", "numba", "transformers", "huggingface-hub", "typing-extensions", "audiocraft", "librosa")
print(", ".join(f"{name} {metadata.version(name)}" for name in names))
print("imported", ", ".join(module.__name__ for module in (bench.decode, bench.gpu, bench.queue_latency)))
EOF
    # Alone, as ./setup does it: loop-engine processes that compile at the same moment can leave a
    # cache that crashes later ones.
    "$python" -c "from generation.loop.parallel import warm_up; warm_up()"
}
set_up 2>&1 | tee "$out/setup.txt"
(( PIPESTATUS[0] == 0 )) || { echo "gpu_check: the set-up failed (above); no bench run" >&2; exit 1; }

endings=()
bench() {  # NAME TIMEOUT_S ARGS...: python ARGS under its own timeout, its output in $out/NAME.txt
    local name=$1 limit=$2 status
    shift 2
    [[ $wanted == "  " || $wanted == *" $name "* ]] || return 0
    echo "== $name (at most ${limit} s): python $*"
    timeout -k 10 "$limit" "$python" "$@" 2>&1 | tee "$out/$name.txt"
    status=${PIPESTATUS[0]}
    endings+=("$name: exit $status$( ((status == 124)) && echo ' (timed out)'); last line: $(tail -n 1 "$out/$name.txt")")
}

if $smoke; then
    bench decode_tiny 300 -m bench.decode --shape tiny --device cpu --batch 1 --batch 4 --seconds 1
    bench queue_latency_tiny 300 -m bench.queue_latency --shape tiny --requests 8
    bench gpu_tiny 300 -m bench.gpu --device cpu --tiny --seconds 1 --repeats 1 --bars 1 --candidates 1 --retries 0
else
    # Most wanted first: the issue's goals are small at batch 1 and 16, medium at 16, the p95 ratio, small's peak at 8.
    bench decode_small 150 -m bench.decode --shape small --device cuda --seconds 6
    bench decode_medium 80 -m bench.decode --shape medium --device cuda --batch 16 --seconds 6
    bench queue_latency 150 -m bench.queue_latency --shape small --device cuda --slots 8 --bpm 120 --bars 2,4,8 --requests 40
    bench gpu 120 -m bench.gpu --repeats 2
fi
printf '%s\n' "== gpu_check: how each bench ended" "${endings[@]}"
