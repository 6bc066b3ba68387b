"""Every option changes the computation; the learned edge grid trains; variants all differ."""

from __future__ import annotations

import itertools

import pytest
import torch

from chextriev.model import TINY, VARIANTS, build_model


def _build(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(name, **{**TINY, **overrides}).eval()


def _signature(model, batch) -> torch.Tensor:
    images, boxes, labels, region_labels = batch
    with torch.no_grad():
        out = model(images, boxes)
        loss = model.loss(out, labels, region_labels)
    return torch.cat([model.retrieval_embedding(out).flatten(), out.graph_logits.flatten(), loss.view(1)])


def test_model_learned_edge_grid_changes_after_one_step(tiny_batch):
    images, boxes, labels, region_labels = tiny_batch
    model = _build("v6").train()
    grid = model.graph.edges.grid
    assert isinstance(grid, torch.nn.Parameter) and grid.requires_grad
    assert any(p is grid for p in model.parameters())
    before = grid.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model.loss(model(images, boxes), labels, region_labels)
    loss.backward()
    optimizer.step()
    assert grid.grad is not None and float(grid.grad.abs().sum()) > 0
    assert not torch.equal(before, grid.detach())


# (variant, option, other value): each flips one option; the shared weights are copied over.
OPTIONS = [
    ("v6", "edges", "none"), ("v6", "edges", "uniform"), ("v6", "edges", "adjacency"),
    ("v2", "edges", "learned"), ("v6", "abs_pos", False), ("v6", "gated_residual", True),
    ("v6", "residual", "global"), ("v5", "residual", "layer"), ("v6", "num_layers", 1),
    ("v6", "graph", "none"), ("v6", "feature_mode", "crop"), ("v6", "roi_output", 1),
    ("v6", "heads", 4), ("v6", "head_dim", 8), ("v6", "crop_size", 16),
    ("resnet50", "global_embedding", "projection"), ("ath", "binary", True),
    ("ath", "triplet_margin", 0.25), ("ath", "code_dim", 8),
    ("v6", "backbone_seed", 1), ("anaxnet", "gcn_hidden", 32), ("anaxnet", "graph_conv", "gcnconv"),
    ("anaxnet", "anaxnet_embedding", "l2"),
]


@pytest.mark.parametrize("name,option,value", OPTIONS, ids=[f"{n}-{o}-{v}" for n, o, v in OPTIONS])
def test_model_each_option_changes_output(name, option, value, tiny_batch):
    if option == "crop_size":  # the crop size only acts in crop mode
        base, other = _build(name, feature_mode="crop"), _build(name, feature_mode="crop", crop_size=value)
        assert not torch.allclose(_signature(base, tiny_batch), _signature(other, tiny_batch), atol=1e-6)
        return
    base = _build(name)
    other = _build(name, **{option: value})
    shared = {k: v for k, v in base.state_dict().items()
              if k in other.state_dict() and other.state_dict()[k].shape == v.shape and option != "backbone_seed"}
    other.load_state_dict(shared, strict=False)
    a, b = _signature(base, tiny_batch), _signature(other, tiny_batch)
    assert a.shape != b.shape or not torch.allclose(a, b, atol=1e-6)


def test_model_graph_importance_changes_loss(tiny_batch):
    images, boxes, labels, region_labels = tiny_batch
    image_level, anatomy_level = _build("v0-image"), _build("v0-anatomy")
    anatomy_level.load_state_dict(image_level.state_dict())
    with torch.no_grad():
        out = image_level(images, boxes)
        assert not torch.isclose(image_level.loss(out, labels, region_labels),
                                 anatomy_level.loss(out, labels, region_labels))


def test_model_every_pair_of_variants_differs(tiny_batch):
    signatures = {name: _signature(_build(name), tiny_batch) for name in VARIANTS}
    for a, b in itertools.combinations(signatures, 2):
        sa, sb = signatures[a], signatures[b]
        assert sa.shape != sb.shape or not torch.allclose(sa, sb, atol=1e-6), f"{a} and {b} compute the same"


def test_model_feature_standardisation_is_used_and_saved(tiny_batch):
    model = _build("v6")
    before = _signature(model, tiny_batch)
    model.regions.set_feature_stats(torch.full((512,), 0.5), torch.full((512,), 2.0))
    assert not torch.allclose(before, _signature(model, tiny_batch))
    assert float(model.state_dict()["regions.feature_scale"][0]) == 2.0


@pytest.mark.parametrize("name", ["v0-anatomy", "v4"])
def test_model_anatomy_variants_classify_images_from_regions(name, tiny_batch):
    """gi=0 trains the head on single nodes only: the image logit is the largest
    present-region logit."""
    images, boxes, _, _ = tiny_batch
    model = build_model(name, **TINY).eval()
    with torch.no_grad():
        output = model(images, boxes)
        logits = model.image_logits(output)
        output.node_logits[0, 3] = 1e4  # region 3 of image 0 is missing: must not count
        masked = model.image_logits(output)
    expected = output.node_logits.clone()
    expected[0, 3] = float("-inf")
    assert torch.equal(masked, expected.max(dim=1).values)
    assert not torch.allclose(logits, output.graph_logits)
    assert torch.allclose(masked[1:], logits[1:])


@pytest.mark.parametrize("name", ["v0-image", "v6", "v6-published-code", "resnet50", "ath", "anaxnet"])
def test_model_image_supervised_variants_classify_with_graph_head(name, tiny_batch):
    images, boxes, _, _ = tiny_batch
    model = build_model(name, **TINY).eval()
    with torch.no_grad():
        output = model(images, boxes)
    assert torch.equal(model.image_logits(output), output.graph_logits)


def test_model_ath_triplet_loss_pushes_collapsed_codes_apart():
    """Near-identical codes of two label groups are pushed apart (the loss falls from the margin)."""
    from chextriev.model.baselines import published_triplet_loss

    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    codes = (torch.ones(4, 3) + 1e-3 * torch.randn(4, 3, generator=torch.Generator().manual_seed(0))).requires_grad_()
    optimizer = torch.optim.SGD([codes], lr=0.5)
    before = float(published_triplet_loss(codes, labels, margin=0.5))
    for _ in range(50):
        loss = published_triplet_loss(codes, labels, margin=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(published_triplet_loss(codes, labels, margin=0.5)) < before - 0.2
