#!/usr/bin/env bash
# Train AnaXNet baseline (2-layer GCN over the adjacency graph + attention).
# Usage: scripts/train_anaxnet.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_anaxnet.sh); see scripts/_variant_common.sh.
VARIANT=anaxnet
source "$(dirname "$0")/_variant_common.sh"
train_variant
