#!/usr/bin/env bash
# Train V2: graph transformer, uniform edges, no absolute positions, image supervision.
# Usage: scripts/train_v2.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v2.sh); see scripts/_variant_common.sh.
VARIANT=v2
source "$(dirname "$0")/_variant_common.sh"
train_variant
