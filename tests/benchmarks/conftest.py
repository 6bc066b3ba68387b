"""The benchmarks' tests train and embed tiny models on a shared 2-core machine: one intra-op
thread avoids OpenMP contention (as the model tests do)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
