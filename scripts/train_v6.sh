#!/usr/bin/env bash
# Train V6: learned edges, absolute positions, image supervision.
# Usage: scripts/train_v6.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v6.sh); see scripts/_variant_common.sh.
VARIANT=v6
source "$(dirname "$0")/_variant_common.sh"
train_variant
