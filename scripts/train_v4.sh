#!/usr/bin/env bash
# Train V4: learned edges, global gated residual, absolute positions, anatomy supervision.
# Usage: scripts/train_v4.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v4.sh); see scripts/_variant_common.sh.
VARIANT=v4
source "$(dirname "$0")/_variant_common.sh"
train_variant
