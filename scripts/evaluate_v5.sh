#!/usr/bin/env bash
# Evaluate V5: learned edges, global gated residual, no absolute positions, image supervision.
# Usage: scripts/evaluate_v5.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v5.sh); see scripts/_variant_common.sh.
VARIANT=v5
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
