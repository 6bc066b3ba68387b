#!/usr/bin/env bash
# Train V0 anatomy-level: no graph (mean of node features), anatomy-level supervision (gi=0).
# Usage: scripts/train_v0_anatomy.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_v0_anatomy.sh); see scripts/_variant_common.sh.
VARIANT=v0-anatomy
source "$(dirname "$0")/_variant_common.sh"
train_variant
