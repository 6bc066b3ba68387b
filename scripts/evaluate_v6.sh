#!/usr/bin/env bash
# Evaluate V6: learned edges, absolute positions, image supervision.
# Usage: scripts/evaluate_v6.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v6.sh); see scripts/_variant_common.sh.
VARIANT=v6
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
