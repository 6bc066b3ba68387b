#!/usr/bin/env bash
# Evaluate ATH baseline (attention-based triplet hashing, 32-d code, 256x256).
# Usage: scripts/evaluate_ath.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_ath.sh); see scripts/_variant_common.sh.
VARIANT=ath
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
