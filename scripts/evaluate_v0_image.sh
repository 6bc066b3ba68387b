#!/usr/bin/env bash
# Evaluate V0 image-level: no graph (mean of node features), image-level supervision (gi=1).
# Usage: scripts/evaluate_v0_image.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v0_image.sh); see scripts/_variant_common.sh.
VARIANT=v0-image
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
