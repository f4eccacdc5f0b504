#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels LoopJam's benches need on a lent GPU machine beyond its
# image (/work/.library/device/KINDS.md lists what the image has: torch, numpy, scipy, numba,
# scikit-learn, transformers, ...), at uv.lock's versions, for CPython on manylinux x86_64.
# bench/gpu_check.sh installs them there; bench/device_stubs stands in for xformers, av and spacy,
# which audiocraft imports but the benches never use (together over 100 MiB of wheels).
#
#   bash bench/device_kit.sh          # for the device image's Python 3.12
#   bash bench/device_kit.sh 3.11     # for a dry run of bench/gpu_check.sh on this machine's Python
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
kit=.whl
limit_mib=60  # what travels to the device is capped at 64 MiB, the repository included

# MusicGen (audiocraft) and what it imports: dora-search and flashy (with colorlog, omegaconf, antlr4,
# retrying, submitit, treetable), julius, num2words. The loop engine: librosa (audioread, decorator,
# pooch, platformdirs, soxr), soundfile (cffi, pycparser), pyloudnorm, pedalboard. generation.config:
# pydantic-settings (pydantic, pydantic-core, annotated-types, typing-inspection, python-dotenv), and
# typing-extensions for pydantic's minimum (the image's version is not known here).
wheels=(
    dora-search colorlog omegaconf retrying submitit treetable julius num2words
    librosa audioread decorator pooch platformdirs soxr soundfile cffi pycparser pyloudnorm pedalboard
    pydantic-settings pydantic pydantic-core annotated-types typing-inspection python-dotenv typing-extensions
)
sdist_only=(audiocraft flashy antlr4-python3-runtime)  # no wheel on PyPI: built here (pure Python)

pinned() {  # NAME... -> NAME==VERSION... as uv.lock has them
    python3 - "$@" <<'EOF'
import sys, tomllib

with open("uv.lock", "rb") as lock:
    versions = {package["name"]: package["version"] for package in tomllib.load(lock)["package"]}
print(" ".join(f"{name}=={versions[name]}" for name in sys.argv[1:]))
EOF
}

rm -rf "$kit"  # one version of each: two would stop the install there
mkdir -p "$kit"
# shellcheck disable=SC2046  # pinned prints one word per requirement
python3 -m pip download -q --no-deps --only-binary=:all: -d "$kit" \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    $(pinned "${wheels[@]}")
# shellcheck disable=SC2046
python3 -m pip wheel -q --no-deps -w "$kit" $(pinned "${sdist_only[@]}")

wheel_files=("$kit"/*.whl)
printf '%s\n' "${wheel_files[@]}"
size_mib=$(( $(du -sb "$kit" | cut -f1) / 1024 / 1024 ))
echo "device kit for Python $python_version: ${#wheel_files[@]} wheels, $size_mib MiB in $kit/"
if (( size_mib > limit_mib )); then
    echo "over $limit_mib MiB: the working tree and the kit must travel in 64 MiB" >&2
    exit 1
fi
