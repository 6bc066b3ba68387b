# Shared settings for scripts/train_<variant>.sh and scripts/evaluate_<variant>.sh (sourced).
#
# Preset: first argument `mimic` or `synthetic-small`, else $PRESET, else `mimic`.
#   mimic            published settings (frozen ResNet50, crop features, lr 1e-4, batch 16 x
#                    accumulation 8, Adam, plateau schedule, early stop); needs
#                    DATA=<MIMIC-CXR-JPG root with Chest ImaGenome scene graphs>.
#   synthetic-small  the fast preset on the synthetic archive; DATA defaults to
#                    data/synthetic, created with `chextriev synth` when absent.
# Other variables: RUN_DIR (default runs/<dataset>/<variant>), RESULTS (default
# results/<dataset>), CHEXTRIEV (the command, default .venv/bin/chextriev or chextriev).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${1:-}" == "mimic" || "${1:-}" == "synthetic-small" ]]; then
  PRESET="$1"
  shift
fi
PRESET="${PRESET:-mimic}"
case "$PRESET" in
  mimic)
    DATASET=mimic
    if [[ -z "${DATA:-}" ]]; then
      echo "preset mimic needs DATA=<MIMIC-CXR-JPG folder with Chest ImaGenome scene graphs>" >&2
      exit 2
    fi
    ;;
  synthetic-small)
    DATASET=synthetic
    DATA="${DATA:-data/synthetic}"
    ;;
  *)
    echo "unknown preset '$PRESET'; valid: mimic, synthetic-small" >&2
    exit 2
    ;;
esac
if [[ -z "${CHEXTRIEV:-}" ]]; then
  if [[ -x .venv/bin/chextriev ]]; then CHEXTRIEV=.venv/bin/chextriev; else CHEXTRIEV=chextriev; fi
fi
RUN_DIR="${RUN_DIR:-runs/$DATASET/$VARIANT}"
RESULTS="${RESULTS:-results/$DATASET}"
SYNTH_PATIENTS="${SYNTH_PATIENTS:-600}"
EXTRA_ARGS=("$@")

ensure_synthetic() {
  if [[ "$PRESET" == "synthetic-small" && ! -f "$DATA/manifest.csv" ]]; then
    echo "creating the synthetic archive in $DATA ($SYNTH_PATIENTS patients)" >&2
    "$CHEXTRIEV" synth --out "$DATA" --patients "$SYNTH_PATIENTS" --seed 0
  fi
}

train_variant() {
  ensure_synthetic
  "$CHEXTRIEV" train --variant "$VARIANT" --preset "$PRESET" --data "$DATA" --out "$RUN_DIR" "${EXTRA_ARGS[@]}"
}

best_checkpoint() {
  # the checkpoint selected on validation mAP@10 ("best" in its name), else the newest
  local ckpt
  ckpt="$(find "$RUN_DIR" -name '*best*.ckpt' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)"
  if [[ -z "$ckpt" ]]; then
    ckpt="$(find "$RUN_DIR" -name '*.ckpt' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)"
  fi
  if [[ -z "$ckpt" ]]; then
    echo "no checkpoint under $RUN_DIR: run scripts/train_${VARIANT//-/_}.sh $PRESET first" >&2
    exit 2
  fi
  echo "$ckpt"
}

evaluate_variant() {
  local ckpt
  ckpt="$(best_checkpoint)"
  # the published table is skip=False; the skip=True numbers are written beside it
  "$CHEXTRIEV" evaluate --checkpoint "$ckpt" --data "$DATA" --split test --k 3 5 10 \
    --no-skip --out "$RESULTS/$VARIANT/no-skip" "${EXTRA_ARGS[@]}"
  "$CHEXTRIEV" evaluate --checkpoint "$ckpt" --data "$DATA" --split test --k 3 5 10 \
    --skip --no-localization --out "$RESULTS/$VARIANT/skip" "${EXTRA_ARGS[@]}"
}
