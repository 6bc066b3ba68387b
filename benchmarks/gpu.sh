#!/usr/bin/env bash
# The GPU benchmark (issue 15): one prepared script for one H100/H200, within 8 minutes.
#
#   benchmarks/gpu.sh                # GPU: install the `gpu` extra into the venv, then measure
#   benchmarks/gpu.sh --cpu          # reduced CPU dry run: no install, small sizes, same code
#
# Environment: PYTHON (default .venv/bin/python: `make setup` made it), OUT (the markdown table,
# default bench-gpu.md / bench-gpu-cpu.md), WHEELS (a folder of wheels to install from instead of
# the package index, for machines without one), NO_INSTALL=1 (the environment already has a GPU
# Faiss), BENCH_ARGS (more arguments for `python -m benchmarks gpu`, e.g. "--images 10000").
#
# What the GPU mode installs, and why: the `gpu` extra is the official Faiss GPU wheel
# (faiss-gpu >= 1.15.1, built for CUDA 12 and sm_90). It brings its own CUDA 12 runtime and cuBLAS
# wheels (libcudart.so.12, libcublas.so.12), which load beside the CUDA 13 libraries of the torch
# build (libcudart.so.13: other sonames, no clash); an R580+ driver, which CUDA 13 needs anyway,
# runs both. faiss-cpu and faiss-gpu install the same `faiss` package folder, so the CPU wheel is
# uninstalled first (the project's base install has no Faiss: `.[cpu]` or `.[gpu]` chooses one).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
mode=gpu
if [ "${1:-}" = "--cpu" ]; then
    mode=cpu
fi

if [ "$mode" = gpu ]; then
    OUT="${OUT:-bench-gpu.md}"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    if [ "${NO_INSTALL:-0}" != 1 ]; then
        "$PYTHON" -m pip uninstall -y -q faiss-cpu >/dev/null 2>&1 || true
        if [ -n "${WHEELS:-}" ]; then
            "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" -e ".[gpu]"
        else
            "$PYTHON" -m pip install -q -e ".[gpu]"
        fi
    fi
    "$PYTHON" - <<'PY'
import sys

import faiss
import torch

problems = []
if not torch.cuda.is_available():
    problems.append(f"torch {torch.__version__} sees no CUDA device")
if faiss.get_num_gpus() < 1:
    problems.append(f"faiss {faiss.__version__} sees no GPU (is faiss-cpu still installed?)")
if problems:
    sys.exit("gpu.sh: " + "; ".join(problems))
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; faiss {faiss.__version__}, "
      f"{faiss.get_num_gpus()} GPU(s)")
PY
    # 8 minutes in all: the install above is minutes at most; the measurement is bounded here.
    # shellcheck disable=SC2086
    timeout 420 "$PYTHON" -m benchmarks gpu --device cuda --precision bf16 --out "$OUT" ${BENCH_ARGS:-}
else
    OUT="${OUT:-bench-gpu-cpu.md}"
    # shellcheck disable=SC2086
    # bf16 as on the GPU; a loaded 2-core machine needs many minutes for the ResNet50 at 512 px
    timeout 3600 "$PYTHON" -m benchmarks gpu --device cpu --precision bf16 --reduced --out "$OUT" ${BENCH_ARGS:-}
fi
echo "markdown table: $OUT"
