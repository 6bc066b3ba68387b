#!/usr/bin/env bash
# Evaluate V3: graph transformer, uniform edges, absolute positions, image supervision.
# Usage: scripts/evaluate_v3.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v3.sh); see scripts/_variant_common.sh.
VARIANT=v3
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
