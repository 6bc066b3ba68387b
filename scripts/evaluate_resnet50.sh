#!/usr/bin/env bash
# Evaluate Global ResNet50 baseline (whole image, 2048-d pooled feature).
# Usage: scripts/evaluate_resnet50.sh [mimic|synthetic-small] [extra chextriev evaluate flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/evaluate_resnet50.sh); see scripts/_variant_common.sh.
VARIANT=resnet50
source "$(dirname "$0")/_variant_common.sh"
evaluate_variant
