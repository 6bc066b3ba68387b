#!/usr/bin/env bash
# Evaluate every variant and baseline that has a checkpoint, then write
# results/<dataset>/summary.md in the layout of the published table (skip=False) and
# results/<dataset>/summary-skip.md (skip=True).
# Usage: scripts/evaluate_all.sh [mimic|synthetic-small]  (DATA=... as for the single scripts)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ARGS=("$@")
PY="${PYTHON:-$HERE/../.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
for v in resnet50 ath anaxnet v0-image v0-anatomy v1 v2 v3 v4 v5 v6; do
  if ! "$HERE/evaluate_${v//-/_}.sh" "${ARGS[@]}"; then
    echo "evaluate_${v//-/_}.sh failed or has no checkpoint: left out of the summary" >&2
  fi
done
PRESET_ARG="${1:-${PRESET:-mimic}}"
if [[ "$PRESET_ARG" == "synthetic-small" ]]; then DATASET=synthetic; else DATASET=mimic; fi
RESULTS="${RESULTS:-$HERE/../results/$DATASET}"
mkdir -p "$RESULTS"
cd "$HERE/.."
"$PY" -m metrics.summary "$RESULTS" --setting no-skip --out "$RESULTS/summary.md"
"$PY" -m metrics.summary "$RESULTS" --setting skip --out "$RESULTS/summary-skip.md" >/dev/null
