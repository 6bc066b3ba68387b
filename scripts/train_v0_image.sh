#!/usr/bin/env bash
# Train V0 image-level: no graph (mean of node features), image-level supervision (gi=1).
# Usage: scripts/train_v0_image.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v0_image.sh); see scripts/_variant_common.sh.
VARIANT=v0-image
source "$(dirname "$0")/_variant_common.sh"
train_variant
