#!/usr/bin/env bash
# Train ATH baseline (attention-based triplet hashing, 32-d code, 256x256).
# Usage: scripts/train_ath.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_ath.sh); see scripts/_variant_common.sh.
VARIANT=ath
source "$(dirname "$0")/_variant_common.sh"
train_variant
