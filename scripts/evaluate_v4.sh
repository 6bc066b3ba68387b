#!/usr/bin/env bash
# Evaluate V4: learned edges, global gated residual, absolute positions, anatomy supervision.
# Usage: scripts/evaluate_v4.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v4.sh); see scripts/_variant_common.sh.
VARIANT=v4
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
