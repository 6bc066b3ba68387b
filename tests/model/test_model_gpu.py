"""GPU: a bf16 autocast training step and embedding on CUDA (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from chextriev.model import TINY, build_model

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["v6", "v4", "anaxnet", "ath"])
def test_model_bf16_step_on_gpu(name, tiny_batch):
    images, boxes, labels, region_labels = (t.cuda() for t in tiny_batch)
    model = build_model(name, **TINY).cuda().train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images, boxes)
        loss = model.loss(out, labels, region_labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert torch.isfinite(model.retrieval_embedding(out)).all()
