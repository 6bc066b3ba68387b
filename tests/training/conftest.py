"""The training tests' fixtures (tiny_batch, tiny_records, tiny_checkpoint) are in
tests/model_fixtures.py, shared with tests/model."""

from __future__ import annotations

import torch

# Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP contention.
torch.set_num_threads(1)
