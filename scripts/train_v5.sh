#!/usr/bin/env bash
# Train V5: learned edges, global gated residual, no absolute positions, image supervision.
# Usage: scripts/train_v5.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v5.sh); see scripts/_variant_common.sh.
VARIANT=v5
source "$(dirname "$0")/_variant_common.sh"
train_variant
