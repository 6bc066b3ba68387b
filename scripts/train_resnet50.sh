#!/usr/bin/env bash
# Train Global ResNet50 baseline (whole image, 2048-d pooled feature).
# Usage: scripts/train_resnet50.sh [mimic|synthetic-small] [extra chextriev train flags]
# (or PRESET=... DATA=... RUN_DIR=... scripts/train_resnet50.sh); see scripts/_variant_common.sh.
VARIANT=resnet50
source "$(dirname "$0")/_variant_common.sh"
train_variant
