#!/usr/bin/env bash
# Evaluate AnaXNet baseline (2-layer GCN over the adjacency graph + attention).
# Usage: scripts/evaluate_anaxnet.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_anaxnet.sh); see scripts/_variant_common.sh.
VARIANT=anaxnet
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
