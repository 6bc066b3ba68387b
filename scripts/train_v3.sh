#!/usr/bin/env bash
# Train V3: graph transformer, uniform edges, absolute positions, image supervision.
# Usage: scripts/train_v3.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v3.sh); see scripts/_variant_common.sh.
VARIANT=v3
source "$(dirname "$0")/_variant_common.sh"
train_variant
