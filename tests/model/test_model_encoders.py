"""Foundation encoders as backbones: each family's tiny random model, written in its library's own
format, loads through the product's loader and gives the library's own features (1e-5) on real
NIH radiographs; region features are a RoIAlign over the patch-token grid (checked against a
hand-written pooling); text towers embed as the library does; wrong and damaged files are
refused with messages that say what was expected; nothing reaches a network."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import encoder_files
import numpy as np
import pytest
import torch
from PIL import Image

from chextriev.anatomy.atlas import Atlas
from chextriev.io.images import load_image
from chextriev.model.build import build_from_config
from chextriev.model.config import ModelConfig, get_config
from chextriev.model.encoders.files import EncoderWeightsError, resolve_encoder
from chextriev.model.encoders.table import input_side
from chextriev.model.encoders.text import TextEncoder

TEXTS = ["left pleural effusion", "no acute finding", "enlarged heart with mild edema"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The four tiny encoders on disk: {name: path}, plus the open_clip reference folder."""
    root = tmp_path_factory.mktemp("encoders")
    hub, reference = encoder_files.write_open_clip(root / "biomedclip")
    return {"rad-dino": encoder_files.write_dinov2(root / "rad-dino"),
            "medsiglip": encoder_files.write_siglip(root / "medsiglip"),
            "biomedclip": hub, "biomedclip-reference": reference,
            "chexzero": encoder_files.write_openai_clip(root / "chexzero.pt")}


@pytest.fixture(scope="module")
def radiographs(nih_sample):
    paths = sorted((nih_sample / "images").glob("*.png"))[:4]
    return paths, [load_image(p) for p in paths]


def encoder_model(name: str, path: Path, **options) -> torch.nn.Module:
    """The product's no-label model of encoder ``name`` read from ``path``."""
    found = resolve_encoder(name, path)
    config = ModelConfig(kind="encoder", backbone=name, backbone_weights=str(path), encoder=found.spec,
                         image_size=input_side(found.spec["input"]), class_names=(), graph="none", edges="none",
                         abs_pos=False, standardize=options.pop("standardize", False), **options)
    return build_from_config(config).eval(), found


def product_global(model, images) -> torch.Tensor:
    boxes = [Atlas.default().boxes_for(*image.shape) for image in images]
    inputs, model_boxes = model.prepare_batch(images, boxes)
    with torch.no_grad():
        return model.extract(inputs, model_boxes)[:, 0]


def assert_features_equal(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours.float(), reference.float(), atol=1e-5, rtol=1e-5)
    assert float(reference.float().std()) > 1e-3  # not a degenerate (constant) feature


# ------------------------------------------------------------------------------ global features
def test_dinov2_folder_gives_the_library_cls_features(files, radiographs):
    from transformers import AutoImageProcessor, Dinov2Model

    paths, images = radiographs
    model, found = encoder_model("rad-dino", files["rad-dino"])
    assert found.spec["family"] == "dinov2" and found.spec["input"]["resize"] == "shortest"
    processor = AutoImageProcessor.from_pretrained(files["rad-dino"])
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = Dinov2Model.from_pretrained(files["rad-dino"]).eval()(pixel_values=pixels).pooler_output
    assert_features_equal(product_global(model, images), reference)


def test_siglip_folder_gives_the_library_image_and_text_features(files, radiographs):
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    paths, images = radiographs
    model, found = encoder_model("medsiglip", files["medsiglip"])
    library = SiglipModel.from_pretrained(files["medsiglip"]).eval()
    pixels = AutoImageProcessor.from_pretrained(files["medsiglip"])(
        images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = library.get_image_features(pixel_values=pixels).pooler_output
    assert_features_equal(product_global(model, images), reference)
    tokens = AutoTokenizer.from_pretrained(files["medsiglip"])(TEXTS, padding="max_length", max_length=16, truncation=True,
                                                                  return_tensors="pt")
    with torch.no_grad():
        text_reference = torch.nn.functional.normalize(
            library.get_text_features(input_ids=tokens["input_ids"]).pooler_output, dim=-1)
    texts = TextEncoder(model.text_tower, found.tokenizer_files).embed(TEXTS)
    np.testing.assert_allclose(texts, text_reference.numpy(), atol=1e-5)


def test_open_clip_hub_folder_gives_the_library_image_and_text_features(files, radiographs):
    import open_clip

    paths, images = radiographs
    model, found = encoder_model("biomedclip", files["biomedclip"])
    assert found.spec["architecture"]["hf_config"]["hidden_size"] == 64  # read from the weights
    library, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{files['biomedclip-reference']}")
    library.eval()
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        reference = library.encode_image(pixels)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{files['biomedclip']}")
        text_reference = library.encode_text(tokenizer(TEXTS), normalize=True)
    assert_features_equal(product_global(model, images), reference)
    texts = TextEncoder(model.text_tower, found.tokenizer_files).embed(TEXTS)
    np.testing.assert_allclose(texts, text_reference.numpy(), atol=1e-5)


def _chexzero_pixels(path: Path, side: int) -> torch.Tensor:
    """CheXzero's own preparation (its data_process.py and zero_shot.py): letterbox into 320 x 320
    with PIL's antialiasing filter, normalise with its grey statistics, resize bicubic."""
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize

    image = Image.open(path).convert("L")
    ratio = 320 / max(image.size)
    size = tuple(int(x * ratio) for x in image.size)
    canvas = Image.new("L", (320, 320))
    canvas.paste(image.resize(size, Image.LANCZOS), ((320 - size[0]) // 2, (320 - size[1]) // 2))
    tensor = torch.from_numpy(np.asarray(canvas, dtype=np.float32))[None].repeat(3, 1, 1)
    return Compose([Normalize((101.48761,) * 3, (83.43944,) * 3),
                    Resize(side, interpolation=InterpolationMode.BICUBIC)])(tensor)


def test_openai_clip_state_dict_gives_the_library_image_and_text_features(files, radiographs):
    import open_clip

    paths, images = radiographs
    model, found = encoder_model("chexzero", files["chexzero"])
    assert found.spec["architecture"]["vision_cfg"]["patch_size"] == 32
    library = open_clip.load_openai_model(str(files["chexzero"]), device="cpu", precision="fp32").eval()
    pixels = torch.stack([_chexzero_pixels(p, 128) for p in paths])
    with torch.no_grad():
        reference = library.encode_image(pixels)
        text_reference = library.encode_text(open_clip.tokenize(TEXTS), normalize=True)
    assert_features_equal(product_global(model, images), reference)
    texts = TextEncoder(model.text_tower, found.tokenizer_files).embed(TEXTS)
    np.testing.assert_allclose(texts, text_reference.numpy(), atol=1e-5)


def test_grey_resizing_equals_the_libraries_rgb_resizing():
    """The product resizes the grey image once; the libraries resize each RGB channel alike."""
    import torchvision.transforms.v2.functional as tvF

    from chextriev.model.encoders.inputs import InputSpec

    rng = np.random.default_rng(0)
    grey = rng.random((301, 257)).astype(np.float32)
    levels = np.rint(grey * 255).astype(np.uint8)
    for backend in ("pil", "torchvision"):
        spec = InputSpec(resize="shortest", size=64, resample="bicubic", backend=backend, crop=64,
                         crop_rounding="round" if backend == "pil" else "floor")
        ours = spec.prepare(grey)[0].numpy()
        if backend == "pil":
            h, w = spec.resized_shape(levels.shape)
            rgb = np.asarray(Image.fromarray(np.stack([levels] * 3, -1)).resize((w, h), Image.BICUBIC))
        else:
            h, w = spec.resized_shape(levels.shape)
            rgb = tvF.resize(torch.from_numpy(np.stack([levels] * 3)), [h, w], antialias=True,
                             interpolation=tvF.InterpolationMode.BICUBIC).permute(1, 2, 0).numpy()
        top, left = spec._crop_origin((h, w))
        for channel in range(3):
            np.testing.assert_array_equal(ours, rgb[top:top + 64, left:left + 64, channel] / np.float32(255))


# ------------------------------------------------------------------------------ region pooling
def _hand_roi_align(grid: np.ndarray, box: np.ndarray, scale: float, bins: int = 3, samples: int = 2) -> np.ndarray:
    """RoIAlign written out: ``grid (D, h, w)``, ``box`` x1 y1 x2 y2 in input pixels; token (i, j)
    sits at input pixel ((j + 0.5) / scale, (i + 0.5) / scale); bilinear samples, zero outside."""
    dim, height, width = grid.shape
    x1, y1, x2, y2 = (float(v) * scale - 0.5 for v in box)
    bin_w, bin_h = (x2 - x1) / bins, (y2 - y1) / bins
    total = np.zeros(dim)
    for by in range(bins):
        for bx in range(bins):
            for sy in range(samples):
                for sx in range(samples):
                    y = y1 + by * bin_h + (sy + 0.5) * bin_h / samples
                    x = x1 + bx * bin_w + (sx + 0.5) * bin_w / samples
                    if y < -1 or y > height or x < -1 or x > width:
                        continue
                    y, x = max(y, 0.0), max(x, 0.0)
                    y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
                    y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                    y, x = (float(y0) if y0 >= height - 1 else y), (float(x0) if x0 >= width - 1 else x)
                    ly, lx = y - y0, x - x0
                    total += ((1 - ly) * (1 - lx) * grid[:, y0, x0] + (1 - ly) * lx * grid[:, y0, x1_]
                              + ly * (1 - lx) * grid[:, y1_, x0] + ly * lx * grid[:, y1_, x1_])
    return total / (bins * bins * samples * samples)


def test_regions_are_roi_align_over_the_patch_token_grid(files, radiographs):
    from transformers import Dinov2Model

    _, images = radiographs
    image = images[0]
    height, width = image.shape
    boxes = np.full((18, 4), np.nan, np.float32)
    boxes[0] = (40, 60, 300, 420)
    boxes[5] = (256, 128, 500, 256)
    boxes[9] = (0, 0, width, height)
    library = Dinov2Model.from_pretrained(files["rad-dino"]).eval()
    config = get_config("v6", backbone="rad-dino", backbone_weights=str(files["rad-dino"]),
                        encoder=resolve_encoder("rad-dino", files["rad-dino"]).spec, image_size=56, width=32, heads=2,
                        head_dim=16, ff_width=64)
    v6 = build_from_config(config).eval()
    encoder, _ = encoder_model("rad-dino", files["rad-dino"])
    inputs, model_boxes = v6.prepare_batch([image], [boxes])
    side = 56
    # the boxes on the 56 px input (a square 512 px radiograph: shortest edge 56, no crop)
    np.testing.assert_allclose(model_boxes[0, 0].numpy(), np.array([40, 60, 300, 420]) * side / 512, rtol=1e-6)
    with torch.no_grad():
        hidden = library(pixel_values=v6.regions.trunk_input(inputs)).last_hidden_state[0, 1:]
        grid = hidden.T.reshape(32, 4, 4).numpy()  # row-major patches: token r * 4 + c is row r, column c
        ours = v6.extract(inputs, model_boxes)[0].numpy()
        ours_encoder = encoder.extract(inputs, model_boxes)[0, 1:].numpy()
    for region in (0, 5, 9):
        expected = _hand_roi_align(grid, model_boxes[0, region].numpy(), scale=4 / side)
        np.testing.assert_allclose(ours[region], expected, atol=1e-5)
        np.testing.assert_allclose(ours_encoder[region], expected, atol=1e-5)
    missing = [r for r in range(18) if r not in (0, 5, 9)]
    assert np.all(ours[missing] == 0) and np.all(ours_encoder[missing] == 0)


def test_clip_regions_are_in_the_joint_space(files, radiographs):
    """open_clip: a region's embedding is the image projection of its pooled tokens, so the whole
    image's region embedding is the projection of the mean token, scored by text like the image."""
    _, images = radiographs
    model, found = encoder_model("chexzero", files["chexzero"])
    boxes = np.full((18, 4), np.nan, np.float32)
    boxes[2] = (0, 0, 512, 512)
    inputs, model_boxes = model.prepare_batch(images[:1], [boxes])
    with torch.no_grad():
        features = model.extract(inputs, model_boxes)
        _, grid = model.features.encode(inputs)
    assert features.shape == (1, 19, found.spec["global_dim"])
    visual = model.features.trunk.visual
    from chextriev.model.region_features import roi_pool

    pooled = roi_pool(grid, model_boxes, 128, 3)[0, 2]
    torch.testing.assert_close(features[0, 3], pooled @ visual.proj, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ refusals
def test_a_folder_of_the_wrong_kind_is_refused_with_what_was_expected(files):
    with pytest.raises(EncoderWeightsError, match="open_clip folder") as error:
        resolve_encoder("rad-dino", files["biomedclip"])
    assert "config.json" in str(error.value)
    with pytest.raises(EncoderWeightsError, match="describes a 'siglip' model; --backbone rad-dino expects a dinov2"):
        resolve_encoder("rad-dino", files["medsiglip"])
    with pytest.raises(EncoderWeightsError, match="no open_clip_config.json; it is a transformers folder of a 'dinov2'"):
        resolve_encoder("biomedclip", files["rad-dino"])
    with pytest.raises(EncoderWeightsError, match="expects one file: a plain OpenAI-CLIP ViT state dict"):
        resolve_encoder("chexzero", files["rad-dino"])
    with pytest.raises(EncoderWeightsError, match="does not exist"):
        resolve_encoder("medsiglip", files["rad-dino"].parent / "nowhere")


def test_a_file_of_another_network_is_refused(files, tmp_path):
    import torchvision

    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(EncoderWeightsError, match="not an OpenAI-CLIP ViT state dict: missing"):
        resolve_encoder("chexzero", resnet)
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(EncoderWeightsError, match="not a plain state dict"):
        resolve_encoder("chexzero", pickled)
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(EncoderWeightsError, match="TorchScript archive"):
        resolve_encoder("chexzero", scripted)


def test_a_config_that_does_not_match_the_named_encoder_is_refused(files, tmp_path):
    other = tmp_path / "dinov2-patch16"
    shutil.copytree(files["rad-dino"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "patch_size": 16}))
    with pytest.raises(EncoderWeightsError, match="patch size 16; rad-dino .* has patch size 14"):
        resolve_encoder("rad-dino", other)
    assert resolve_encoder("dinov2", other).spec["patch_size"] == 16  # the generic entry takes any DINOv2
    wider = tmp_path / "dinov2-wider"
    shutil.copytree(files["rad-dino"], wider)
    (wider / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    found = resolve_encoder("rad-dino", wider)
    with pytest.raises(EncoderWeightsError, match="do not fit its config.json"):
        encoder_model("rad-dino", wider)
    assert found.spec["token_dim"] == 64


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_missing_and_truncated_files_are_refused(files, tmp_path):
    dino = tmp_path / "dino"
    shutil.copytree(files["rad-dino"], dino)
    _truncate(dino / "model.safetensors")
    with pytest.raises(EncoderWeightsError, match="truncated"):
        resolve_encoder("rad-dino", dino)
    (dino / "model.safetensors").unlink()
    with pytest.raises(EncoderWeightsError, match="has no weights file: expected model.safetensors"):
        resolve_encoder("rad-dino", dino)
    clip = tmp_path / "clip"
    shutil.copytree(files["biomedclip"], clip)
    _truncate(clip / "open_clip_pytorch_model.bin")
    with pytest.raises(EncoderWeightsError, match="truncated or not a torch file"):
        resolve_encoder("biomedclip", clip)
    (clip / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(EncoderWeightsError, match="no weights: expected one of open_clip_model.safetensors"):
        resolve_encoder("biomedclip", clip)
    chexzero = tmp_path / "chexzero.pt"
    shutil.copy(files["chexzero"], chexzero)
    _truncate(chexzero)
    with pytest.raises(EncoderWeightsError, match="truncated"):
        resolve_encoder("chexzero", chexzero)
    siglip = tmp_path / "siglip"
    shutil.copytree(files["medsiglip"], siglip)
    (siglip / "spiece.model").unlink()
    with pytest.raises(EncoderWeightsError, match="not its tokenizer files .* or pass --no-text"):
        resolve_encoder("medsiglip", siglip)
    assert resolve_encoder("medsiglip", siglip, with_text=False).spec["text"] is None
    broken = tmp_path / "broken-config"
    shutil.copytree(files["rad-dino"], broken)
    (broken / "config.json").write_text('{"model_type": "dinov2", "hidden_si')
    with pytest.raises(EncoderWeightsError, match="cannot read .*config.json"):
        resolve_encoder("rad-dino", broken)


def test_a_hub_cache_folder_is_read_through_its_snapshot(files, tmp_path):
    cache = tmp_path / "models--microsoft--rad-dino"
    snapshot = cache / "snapshots" / "0123abc"
    shutil.copytree(files["rad-dino"], snapshot)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0123abc")
    assert resolve_encoder("rad-dino", cache).spec["source"] == str(snapshot)


def test_loading_never_reaches_a_network(files, radiographs, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _, images = radiographs
    for name in ("rad-dino", "medsiglip", "biomedclip", "chexzero"):
        model, found = encoder_model(name, files[name])
        assert product_global(model, images[:1]).shape[0] == 1
        if model.text_tower is not None:
            assert TextEncoder(model.text_tower, found.tokenizer_files).embed(["effusion"]).shape == (
                1, found.spec["global_dim"])


def test_default_architectures_build_randomly_without_files():
    config = get_config("v6", backbone="biomedclip", image_size=224, width=32, heads=2, head_dim=16, ff_width=64)
    assert config.encoder["weights_id"] == "random-seed0" and config.feature_dim == 768
    with pytest.raises(ValueError, match="takes 224 px inputs"):
        get_config("v6", backbone="biomedclip", image_size=256)
    with pytest.raises(ValueError, match="feature_mode must be 'roi'"):
        get_config("v6", backbone="biomedclip", image_size=224, feature_mode="crop")
    with pytest.raises(EncoderWeightsError, match="no default architecture"):
        resolve_encoder("dinov2")


# ------------------------------------------------------------------------------ precision, compile
def _encoder_checkpoint(files, name, archive_images, tmp_path) -> Path:
    from chextriev.model.init import init_encoder_model

    archive = tmp_path / "archive"
    archive.mkdir(exist_ok=True)
    for path in archive_images:
        shutil.copy(path, archive / path.name)
    out = tmp_path / f"{name}.ckpt"
    init_encoder_model(name, files[name], archive, out, sample=4, progress=False)
    return out


@pytest.mark.parametrize("name", ["rad-dino", "medsiglip", "biomedclip", "chexzero"])
def test_bf16_encoder_embeddings_agree_with_fp32(files, radiographs, name, tmp_path):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images

    paths, images = radiographs
    checkpoint = _encoder_checkpoint(files, name, paths, tmp_path)
    reference = embed_images(load_checkpoint(checkpoint, precision="fp32"), images)
    loaded = load_checkpoint(checkpoint, precision="bf16")
    ours = embed_images(loaded, images)
    cosines = np.sum(reference.embeddings * ours.embeddings, axis=1)
    assert ours.embeddings.dtype == np.float32 and cosines.min() > 0.99, cosines
    if loaded.text_encoder is not None:
        fp32_text = load_checkpoint(checkpoint, precision="fp32").text_encoder.embed(TEXTS)
        assert np.sum(fp32_text * loaded.text_encoder.embed(TEXTS), axis=1).min() > 0.99


@pytest.mark.slow
def test_a_compiled_encoder_gives_the_eager_embeddings(files, radiographs, tmp_path):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.compiled import compiled_trunk
    from chextriev.embedding import embed_images

    paths, images = radiographs
    checkpoint = _encoder_checkpoint(files, "rad-dino", paths, tmp_path)
    eager = embed_images(load_checkpoint(checkpoint, precision="fp32"), images)
    loaded = load_checkpoint(checkpoint, precision="fp32", compile=True, compile_batch=4)
    trunk = compiled_trunk(loaded.model)
    assert trunk is not None
    inputs, _ = loaded.model.prepare_batch(images, [np.full((18, 4), np.nan, np.float32)] * len(images))
    assert trunk.accepts(loaded.model.feature_module().trunk_input(inputs))  # the package runs, not the fallback
    compiled = embed_images(loaded, images)
    assert trunk.failed is None
    np.testing.assert_allclose(compiled.embeddings, eager.embeddings, atol=1e-4)
    np.testing.assert_allclose(compiled.region_embeddings, eager.region_embeddings, atol=1e-4)
    # open_clip's own ViT was measured slower compiled: --compile leaves it eager, and says so
    clip = load_checkpoint(_encoder_checkpoint(files, "chexzero", paths, tmp_path), precision="fp32", compile=True)
    assert compiled_trunk(clip.model) is None


def test_text_points_at_tokens_and_regions_in_the_joint_space(files, radiographs, tmp_path):
    """A text's token map is the cosine of open_clip's own projected patch tokens to open_clip's
    own text embedding; region scores are the text's cosine to the stored region embeddings."""
    import open_clip

    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.localization.text import region_scores, text_heatmap, token_similarities

    paths, images = radiographs
    loaded = load_checkpoint(_encoder_checkpoint(files, "chexzero", paths, tmp_path), precision="fp32")
    library = open_clip.load_openai_model(str(files["chexzero"]), device="cpu", precision="fp32").eval()
    library.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = library.visual(_chexzero_pixels(paths[0], 128)[None])
        text = library.encode_text(open_clip.tokenize(TEXTS[:1]), normalize=True)[0]
        expected = (torch.nn.functional.normalize(tokens[0] @ library.visual.proj, dim=-1) @ text).reshape(4, 4)
    np.testing.assert_allclose(token_similarities(loaded, images[0], TEXTS[0]), expected.numpy(), atol=1e-5)
    heat = text_heatmap(loaded, images[0], TEXTS[0])
    assert heat.shape == images[0].shape and heat.min() >= 0 and heat.max() > 0.95  # pixels between token centres
    regions = embed_images(loaded, images[:1]).region_embeddings[0]
    scores = region_scores(loaded, regions, TEXTS)
    np.testing.assert_allclose(scores, loaded.text_encoder.embed(TEXTS) @ regions.T, atol=1e-6)
    assert scores.shape == (3, 18) and np.abs(scores).max() <= 1.0 + 1e-5
