"""The model tests' fixtures (tiny_batch, tiny_records, tiny_checkpoint) are in
tests/model_fixtures.py, shared with tests/training."""

from __future__ import annotations

import torch

# Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP contention
# (a 64 px ResNet18 batch takes 0.08 s with one thread and seconds with two under load).
torch.set_num_threads(1)
