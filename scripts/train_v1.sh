#!/usr/bin/env bash
# Train V1: graph transformer, adjacency edges, no absolute positions, image supervision.
# Usage: scripts/train_v1.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v1.sh); see scripts/_variant_common.sh.
VARIANT=v1
source "$(dirname "$0")/_variant_common.sh"
train_variant
