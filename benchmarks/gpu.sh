#!/usr/bin/env bash
# The GPU benchmark (issue 23.4): one prepared command for one H100/H200 of the lab's device
# image, within 8 minutes. That image has Python 3.12 with its own torch (2.11), torchvision,
# transformers, Lightning, torch-geometric, numpy, pandas, scipy, Pillow, requests; it has no
# Faiss, Flask, SQLAlchemy or pydicom, no network, and at most 64 MiB travel with a command (this
# checkout included). So the packages the project needs beyond the image travel as wheels, and
# Faiss is the CPU wheel (faiss-gpu with its CUDA runtime is about 1.6 GB): the vector search at
# 1M x 1024 is measured on the GPU with torch (exact, the reference), on the CPU with the
# project's index, and on the GPU with Faiss only where a Faiss GPU build is installed.
#
#   benchmarks/gpu.sh --fetch-wheels   # here (a package index reachable): the cp312 wheels into
#                                      # .whl/ (git-ignored), sizes checked against the budget
#   benchmarks/gpu.sh                  # there, with .whl carried: install, check the GPU, measure
#   benchmarks/gpu.sh --cpu            # here: the reduced dry run, this venv, small sizes, same code
#
# On the device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540); the
# markdown table and the JSON figures come back under $OUT (OUT unset: the checkout's root).
# Environment: PYTHON (default: python3 there, .venv/bin/python or python3 for --cpu), WHEELS
# (default .whl), BENCH_ARGS (more arguments for `python -m benchmarks gpu`).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="${WHEELS:-.whl}"
OUT_DIR="${OUT:-.}"
# What the project imports on the benchmark's paths (synth, checkpoint, index, serve, upload)
# that the device image lacks, pinned to what this project is tested with; each wheel's own
# dependencies are in the image or in this list (pip's --no-deps: nothing else is fetched).
WHEEL_SPECS=(
    "faiss-cpu==1.15.1"
    "SQLAlchemy==2.1.9" "greenlet==3.5.6" "alembic==1.20.1" "Mako==1.4.3"
    "Flask==3.1.3" "itsdangerous==2.2.0" "blinker==1.9.0" "gunicorn==27.0.1"
    "pydicom==3.0.2"
)
BUDGET_MIB=64

fetch_wheels() {
    mkdir -p "$WHEELS"
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx "/$WHEELS/" "$exclude" 2>/dev/null || echo "/$WHEELS/" >>"$exclude"
    local python="${PYTHON:-python3}"
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${WHEEL_SPECS[@]}"
    local wheels_kib tree_kib
    wheels_kib=$(du -sk "$WHEELS" | cut -f1)
    tree_kib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- | tail -1 | cut -f1)
    echo "wheels: $((wheels_kib / 1024)) MiB in $WHEELS; checkout: $((tree_kib / 1024)) MiB; budget ${BUDGET_MIB} MiB"
    if [ $((wheels_kib + tree_kib)) -gt $((BUDGET_MIB * 1024)) ]; then
        echo "gpu.sh: wheels + checkout exceed ${BUDGET_MIB} MiB" >&2
        exit 1
    fi
}

case "${1:-}" in
--fetch-wheels)
    fetch_wheels
    exit 0
    ;;
--cpu)
    PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
    # shellcheck disable=SC2086
    timeout 3600 "$PYTHON" -m benchmarks gpu --device cpu --precision bf16 --reduced \
        --out "$OUT_DIR/bench-gpu-cpu.md" ${BENCH_ARGS:-}
    exit 0
    ;;
"") ;;
*)
    echo "usage: benchmarks/gpu.sh [--fetch-wheels | --cpu]" >&2
    exit 2
    ;;
esac

PYTHON="${PYTHON:-python3}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} sees no CUDA device (benchmarks/gpu.sh --cpu is the dry run)")
try:
    import faiss
    where = f"faiss {faiss.__version__} ({faiss.get_num_gpus()} GPU(s) visible to Faiss)"
except ImportError as error:
    sys.exit(f"gpu.sh: no Faiss ({error}): carry the wheels (benchmarks/gpu.sh --fetch-wheels)")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; {where}")
PY
# 8 minutes in all: the install above takes seconds; each stage of the measurement is bounded
# inside it, and the whole by this timeout (the table is written after every stage).
# shellcheck disable=SC2086
timeout 450 "$PYTHON" -m benchmarks gpu --device cuda --precision bf16 --out "$OUT_DIR/bench-gpu.md" \
    ${BENCH_ARGS:-}
echo "markdown table: $OUT_DIR/bench-gpu.md"
