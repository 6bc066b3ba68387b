#!/usr/bin/env bash
# Evaluate V1: graph transformer, adjacency edges, no absolute positions, image supervision.
# Usage: scripts/evaluate_v1.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_v1.sh); see scripts/_variant_common.sh.
VARIANT=v1
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
