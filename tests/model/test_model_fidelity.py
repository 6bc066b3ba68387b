"""The published architecture point by point: shared head, attention and edges, crop mode from
the original, the published AnaXNet graph convolution and ATH loss (hand-computed cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from chextriev.model import TINY, VARIANTS, build_model, get_config
from chextriev.model.tensors import masked_mean

REGION_VARIANTS = [name for name, config in VARIANTS.items() if config.has_regions]


def _build(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(name, **{**TINY, **overrides})


# ------------------------------------------------------------------------- the shared head
@pytest.mark.parametrize("name", REGION_VARIANTS)
def test_model_one_shared_head_classifies_nodes_and_graph(name, tiny_batch):
    images, boxes, _, _ = tiny_batch
    model = _build(name).eval()
    classifiers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 9]
    assert classifiers == [model.head.linear], "one LayerNorm + Linear head, no second classifier"
    assert not any(key.startswith("heads.") for key in model.state_dict())
    with torch.no_grad():
        out = model(images, boxes)
        if name == "anaxnet" or name.startswith("anaxnet-"):
            nodes = out.node_embeddings  # AnaXNet's nodes are what the head classifies
        else:
            nodes, _ = model.graph(model.regions.project(model.extract(images, boxes), out.mask), out.mask)
        assert torch.allclose(out.node_logits, model.head(nodes), atol=1e-5)
        assert torch.allclose(out.graph_logits, model.head(masked_mean(nodes, out.mask)), atol=1e-5)


@pytest.mark.parametrize("name", REGION_VARIANTS)
def test_model_loss_trains_the_per_region_classifier(name, tiny_batch):
    """Whatever the supervision (gi = 1, 0), every parameter behind the node logits' classifier
    gets a nonzero gradient from the variant's own loss."""
    images, boxes, labels, region_labels = tiny_batch
    model = _build(name).train()
    out = model(images, boxes)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    reached = torch.autograd.grad(out.node_logits.sum(), [p for _, p in named], retain_graph=True, allow_unused=True)
    behind_nodes = {n for (n, _), g in zip(named, reached) if g is not None and float(g.abs().sum()) > 0}
    assert {"head.linear.weight", "head.linear.bias", "head.norm.weight"} <= behind_nodes
    grads = torch.autograd.grad(model.loss(out, labels, region_labels), [p for _, p in named], allow_unused=True)
    trained = {n for (n, _), g in zip(named, grads) if g is not None and float(g.abs().sum()) > 0}
    untrained = sorted(n for n in behind_nodes if n.startswith("head.") and n not in trained)
    assert not untrained, f"{name}: the loss leaves the per-region classifier without gradient: {untrained}"


def test_model_image_supervision_moves_region_logits(tiny_batch):
    """gi = 1 (V6): a few image-level steps change what the node logits say."""
    images, boxes, labels, region_labels = tiny_batch
    model = _build("v6").train()
    with torch.no_grad():
        before = model(images, boxes).node_logits.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model.loss(model(images, boxes), labels, torch.full_like(region_labels, float("nan")))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(before, model(images, boxes).node_logits, atol=1e-4)


# ------------------------------------------------------------------- attention and edges
def test_model_v6_attention_is_8_heads_of_64_with_biases():
    from chextriev.model.graph_transformer import GraphTransformer

    config = get_config("v6")
    assert (config.heads, config.head_dim, config.inner_width, config.width) == (8, 64, 512, 1024)
    graph = GraphTransformer(config)
    for layer in graph.layers:
        attention = layer.attention
        assert attention.to_q.weight.shape == (512, 1024) and attention.to_q.bias is not None
        assert attention.to_kv.weight.shape == (1024, 1024) and attention.to_kv.bias is not None
        assert attention.edges_to_kv.weight.shape == (512, 1024) and attention.edges_to_kv.bias is not None
        assert attention.to_out.weight.shape == (1024, 512)
        edge_maps = [m for m in attention.modules() if isinstance(m, torch.nn.Linear) and m.in_features == 1024
                     and m.out_features == 512 and m is not attention.to_q]
        assert edge_maps == [attention.edges_to_kv], "one edge map shared by keys and values"


def test_model_edge_and_position_initialisation_as_published():
    from chextriev.model.graph_transformer import GraphTransformer

    torch.manual_seed(0)
    graph = GraphTransformer(get_config("v6")).requires_grad_(False)
    assert abs(float(graph.position.std()) - 1.0) < 0.05  # nn.Embedding: standard normal
    assert abs(float(graph.edges.table.std()) - 1.0) < 0.1
    bound = math.sqrt(6.0 / (2 * 18 * 1024))  # xavier_uniform_ of an (18, 18, 1024) tensor
    assert float(graph.edges.grid.abs().max()) <= bound and float(graph.edges.grid.std()) > bound / 3


@pytest.mark.parametrize("edges", ["adjacency", "uniform", "learned"])
def test_model_edge_vectors_select_from_one_table(edges):
    from chextriev.model.graph_transformer import EdgeVectors
    from chextriev.model.tensors import adjacency_tensor

    config = get_config("v6", **TINY, edges=edges)
    module = EdgeVectors(config)
    vectors = module()
    assert vectors.shape == (18, 18, config.width)
    if edges == "adjacency":
        adjacency = adjacency_tensor(config.adjacency)
        assert torch.equal(vectors, module.table[adjacency])
        assert not torch.equal(vectors[0, 0], vectors[0, 17])  # joined and not joined pairs differ
    elif edges == "uniform":
        assert torch.equal(vectors, module.table[1].expand(18, 18, -1))
    else:
        assert torch.equal(vectors, module.table[1] + module.grid)
        assert isinstance(module.grid, torch.nn.Parameter) and module.grid.requires_grad


def test_model_attention_matches_a_loop_reference():
    """q_i . (k_j + e_ij) / sqrt(D), softmax over present j, sum a_ij (v_j + e_ij), per head."""
    from chextriev.model.graph_transformer import EdgeAttention

    config = get_config("v6", width=8, heads=2, head_dim=3, ff_width=8)
    torch.manual_seed(0)
    attention = EdgeAttention(config)
    x = torch.randn(1, 18, 8)
    edges = torch.randn(18, 18, 8)
    mask = torch.ones(1, 18, dtype=torch.bool)
    mask[0, 5] = False
    with torch.no_grad():
        out = attention(x, edges, mask)
        q = attention.to_q(x)[0].view(18, 2, 3)
        k, v = attention.to_kv(x)[0].view(18, 2, 2, 3).unbind(dim=1)
        e = attention.edges_to_kv(edges).view(18, 18, 2, 3)
        heads = torch.zeros(18, 2, 3)
        for h in range(2):
            for i in range(18):
                logits = torch.tensor([float(q[i, h] @ (k[j, h] + e[i, j, h])) / math.sqrt(3) for j in range(18)])
                logits[5] = float("-inf")
                weights = logits.softmax(dim=0)
                heads[i, h] = sum(weights[j] * (v[j, h] + e[i, j, h]) for j in range(18))
        expected = attention.to_out(heads.reshape(18, 6))
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_model_v6_published_code_is_v6_gated_and_global():
    v6, code = VARIANTS["v6"], VARIANTS["v6-published-code"]
    assert (code.gated_residual, code.residual) == (True, "global")
    assert {**v6.to_dict(), "gated_residual": True, "residual": "global"} == code.to_dict()


# ------------------------------------------------------------------- crop mode from the original
def _pil_crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Reference: PIL crop of each box of the float image, then PIL's (antialiased) bilinear resize."""
    pil = Image.fromarray(image.astype(np.float32), mode="F")
    return np.stack([np.asarray(pil.crop(tuple(float(v) for v in box)).resize((size, size), Image.BILINEAR))
                     for box in boxes])


@pytest.fixture(scope="module")
def large_image():
    """A 2,200 x 2,600 px image with structure at every scale, and 18 atlas boxes on it."""
    from chextriev.anatomy.atlas import default_template

    rng = np.random.default_rng(0)
    h, w = 2200, 2600
    yy, xx = np.mgrid[0:h, 0:w]
    image = 0.4 + 0.25 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 0.1 * rng.random((h, w))
    boxes = (default_template() * np.array([w, h, w, h])).astype(np.float32)
    boxes[3] += 0.4  # non-integer coordinates are rounded as PIL rounds them
    boxes[4] = [2500.0, 2100.0, 2700.0, 2300.0]  # partly outside: PIL fills with black
    return np.clip(image, 0, 1).astype(np.float32), boxes


def test_model_crop_regions_equal_pil_crop_and_antialiased_resize(large_image):
    from chextriev.model.preprocess import crop_regions

    image, boxes = large_image
    assert min(image.shape) >= 2000
    ours = crop_regions(image, boxes, 224)[:, 0].numpy()
    reference = _pil_crops(image, boxes, 224)
    assert ours.shape == reference.shape == (18, 224, 224)
    assert float(np.abs(ours - reference).max()) < 1e-4


def test_model_crop_mode_embeds_crops_of_the_original(large_image):
    """Crop mode through the model's own input path (what embed_images and training use): the
    backbone sees the PIL-reference crops of the full-resolution image, not of a resized one."""
    from chextriev.model.backbone import normalize

    image, boxes = large_image
    boxes = boxes.copy()
    boxes[7] = np.nan  # a missing region stays masked
    model = _build("v6", feature_mode="crop", crop_size=64).eval()
    assert model.max_input_side is None and _build("v6").max_input_side == 64
    inputs, model_boxes = model.prepare_batch([image], [boxes])
    assert inputs.shape == (1, 18, 1, 64, 64)
    assert torch.allclose(model_boxes[0], torch.from_numpy(boxes), equal_nan=True)  # original pixels
    with torch.no_grad():
        features = model.extract(inputs, model_boxes)[0]
        present = [r for r in range(18) if r != 7]
        crops = torch.from_numpy(_pil_crops(image, boxes[present], 64))[:, None]
        expected = model.regions.trunk(normalize(crops.clamp(0, 1))).mean(dim=(2, 3))
    assert float(features[7].abs().sum()) == 0.0
    assert torch.allclose(features[present], expected, atol=1e-3, rtol=1e-3)


def test_model_mimic_preset_crops_the_original():
    from chextriev.training.fit import resolve_config
    from chextriev.training.presets import get_preset

    config = resolve_config("v6", get_preset("mimic").model, get_config("v6").class_names,
                            np.eye(18, dtype=np.int64))
    assert config.feature_mode == "crop" and config.crop_size == 224 and config.crops_original


def test_model_loaded_model_tells_the_indexer_how_much_image_it_needs():
    from chextriev.checkpoint import LoadedModel

    assert LoadedModel.from_model(_build("v6", feature_mode="crop")).max_input_side is None
    assert LoadedModel.from_model(_build("v6")).max_input_side == TINY["image_size"]
    assert LoadedModel.from_model(_build("ath", image_size=32)).max_input_side == 32


# --------------------------------------------------------------------------------- AnaXNet
def test_model_anaxnet_graph_convolution_hand_case():
    from chextriev.model.baselines import GraphConvolution

    conv = GraphConvolution(2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0], [2.0]]))
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # X W = [1, 2, 3]
    adjacency = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # raw: no normalisation
    assert torch.equal(conv(x, adjacency), torch.tensor([[[3.0], [6.0], [5.0]]]))
    assert not any(name.endswith("bias") for name, _ in conv.named_parameters())
    bound = 1.0 / math.sqrt(1)
    assert float(GraphConvolution(5, 1).weight.abs().max()) <= bound


def test_model_anaxnet_two_layers_leaky_relu_02_and_layernorm_embedding(tiny_batch):
    images, boxes, _, _ = tiny_batch
    model = _build("anaxnet").eval()
    config = model.config
    assert model.gcn.gc1.weight.shape == (config.width, config.gcn_hidden)
    assert model.gcn.gc2.weight.shape == (config.gcn_hidden, config.width)
    with torch.no_grad():
        features = model.extract(images, boxes)
        mask = ~torch.isnan(boxes).any(-1)
        out = model.forward_features(features, mask)
        x = model.regions.project(features, mask)
        a = model.gcn.adjacency
        present = mask.unsqueeze(-1).float()
        hidden = F.leaky_relu(a @ (x * present) @ model.gcn.gc1.weight, 0.2) * present
        g = a @ hidden @ model.gcn.gc2.weight
        logits = x @ g.transpose(1, 2)
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        nodes = (logits.softmax(dim=-1) @ x + x) * present
        assert torch.allclose(out.node_embeddings, nodes, atol=1e-4, rtol=1e-4)
        expected = (model.head.norm(nodes) * present).sum(1) / present.sum(1)
        assert torch.allclose(out.embedding, expected, atol=1e-5)
    assert torch.equal(model.gcn.adjacency, torch.as_tensor(np.asarray(config.adjacency or _default()), dtype=torch.float))


def _default():
    from chextriev.model.adjacency import anatomical_adjacency

    return anatomical_adjacency()


# ------------------------------------------------------------------------------------- ATH
def test_model_ath_published_triplet_loss_hand_case():
    from chextriev.model.baselines import published_triplet_loss

    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    # agreements (equal label values): a0: [3, 2, 0]; a1: [2, 3, 1]; a2: [0, 1, 3]
    # positives (most, not self): 0->1, 1->0, 2->1; negatives (fewest): 0->2, 1->2, 2->0
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    # mean squared distances: d01 = 1, d02 = 2, d12 = 1
    # margin m = 0.5 * K = 1: a0: 1 - d02 + d01 = 0; a1: 1 - d12 + d01 = 1; a2: 1 - d20 + d21 = 0
    assert float(published_triplet_loss(codes, labels, margin=0.5)) == pytest.approx(1.0 / 3)
    # margin 2 (m = 4): a0: 4 - 2 + 1 = 3; a1: 4 - 1 + 1 = 4; a2: 4 - 2 + 1 = 3
    assert float(published_triplet_loss(codes, labels, margin=2.0)) == pytest.approx(10.0 / 3)
    unknown = labels.clone()
    unknown[1:, 0] = float("nan")  # rows with unknown labels are skipped: one row left
    assert float(published_triplet_loss(codes, unknown, margin=0.5)) == 0.0


def test_model_ath_published_network(tiny_batch):
    from chextriev.model.baselines import PublishedATHNet, SpatialAttention

    images = tiny_batch[0]
    model = _build("ath", image_size=64).eval()
    net = model.net
    assert isinstance(net, PublishedATHNet)
    assert [type(m).__name__ for m in (net.block1[0], net.block2[0], net.block3)] == ["ResBlock"] * 3
    assert (net.block1[0].body[0].out_channels, net.block2[0].body[0].out_channels,
            net.block3.body[0].out_channels) == (16, 8, 1)
    assert net.hash.in_features == net.classify.in_features == (64 // 8) ** 2
    attention = SpatialAttention()
    x = torch.randn(2, 5, 4, 4)
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
    assert torch.allclose(attention(x), torch.sigmoid(attention.conv(pooled)))
    with torch.no_grad():
        out = model(images)
        net.hash.weight.mul_(100.0)  # no tanh: the code is not bounded
        scaled = model(images)
    assert float(scaled.code.abs().max()) > 1.0
    assert torch.allclose(out.graph_logits, scaled.graph_logits)  # the class layer is parallel to the hash
    assert torch.allclose(scaled.embedding, scaled.code)


def test_model_ath_loss_is_bce_plus_published_triplet(tiny_batch):
    from chextriev.model.baselines import published_triplet_loss
    from chextriev.model.heads import masked_bce

    images, _, labels, _ = tiny_batch
    model = _build("ath", image_size=64).eval()
    with torch.no_grad():
        out = model(images)
        expected = masked_bce(out.graph_logits, labels) + published_triplet_loss(out.code, labels, 0.5)
        assert torch.allclose(model.loss(out, labels, None), expected)
    assert model.config.triplet_margin * model.config.code_dim == 0.5 * TINY["code_dim"]
