#!/usr/bin/env bash
# Evaluate V2: graph transformer, uniform edges, no absolute positions, image supervision.
# Usage: scripts/evaluate_v2.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v2.sh); see scripts/_variant_common.sh.
VARIANT=v2
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
