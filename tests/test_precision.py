"""Precision (chextriev.precision): the ``auto`` rule, bf16 accuracy against fp32 on a small
synthetic archive, and the detector and Grad-CAM following the model's precision."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from chextriev import precision as P
from chextriev.errors import UnknownNameError

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 bf16 i8mm\n"


def test_cpuinfo_flags_and_the_bf16_features():
    assert P.cpu_bf16_features(P.parse_cpuinfo_flags(SAPPHIRE_RAPIDS)) == ("amx_bf16", "avx512_bf16")
    assert P.cpu_bf16_features(P.parse_cpuinfo_flags(ZEN4)) == ("avx512_bf16",)
    assert P.cpu_bf16_features(P.parse_cpuinfo_flags(SKYLAKE)) == ()
    assert P.cpu_bf16_features(P.parse_cpuinfo_flags(GRAVITON)) == ()  # arm bf16 is not used by auto
    assert P.parse_cpuinfo_flags("no flags line") == frozenset()


@pytest.mark.parametrize("cpuinfo, expected", [(SAPPHIRE_RAPIDS, "bf16"), (ZEN4, "bf16"), (SKYLAKE, "fp32")])
def test_auto_is_bf16_exactly_where_the_cpu_has_it(monkeypatch, cpuinfo, expected):
    monkeypatch.setattr(P, "_proc_cpuinfo_flags", lambda: P.parse_cpuinfo_flags(cpuinfo))
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("BF16", torch.device("cpu")) == "bf16"


def test_torch_probes_answer_without_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(P, "_proc_cpuinfo_flags", lambda: None)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert P.cpu_bf16_features() == ("avx512_bf16",)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert P.resolve_precision("auto", "cpu") == "fp32"


def test_explicit_bf16_without_native_units_warns_but_runs(monkeypatch, caplog):
    monkeypatch.setattr(P, "_proc_cpuinfo_flags", lambda: P.parse_cpuinfo_flags(SKYLAKE))
    with caplog.at_level(logging.WARNING, logger="chextriev.precision"):
        assert P.resolve_precision("bf16", "cpu") == "bf16"
    assert "emulated" in caplog.text


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))  # H100/H200
    assert P.resolve_precision("auto", "cuda") == "bf16"
    assert P.resolve_precision("auto", "cuda:1") == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 0))  # V100
    assert P.resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.resolve_precision("auto", "cuda") == "fp32"


def test_bad_names_list_the_valid_ones(monkeypatch):
    with pytest.raises(UnknownNameError, match="auto, fp32, bf16"):
        P.resolve_precision("fp16", "cpu")
    monkeypatch.setenv(P.ENV_VAR, "half")
    assert P.default_precision() == "half"  # parsing never fails on it ...
    with pytest.raises(UnknownNameError, match=r"\$CHEXTRIEV_PRECISION"):  # ... loading does, naming it
        P.resolve_precision(P.default_precision(), "cpu")
    with pytest.raises(P.PrecisionError, match="fp32"):
        P.resolve_precision("bf16", "mps")
    with pytest.raises(UnknownNameError):
        P.autocast("auto", "cpu")  # must be resolved first
    monkeypatch.delenv(P.ENV_VAR)
    assert P.default_precision() == "auto"


def test_prepare_model_casts_only_conv_and_linear_weights():
    from chextriev.model import TINY, build_model

    model = P.prepare_model(build_model("v6", **TINY).eval(), "bf16")
    dtypes = {type(m).__name__: m.weight.dtype for m in model.modules() if hasattr(m, "weight")
              and isinstance(m.weight, torch.Tensor)}
    assert dtypes["Conv2d"] == dtypes["Linear"] == torch.bfloat16
    assert dtypes["BatchNorm2d"] == dtypes["LayerNorm"] == torch.float32
    assert all(b.dtype != torch.bfloat16 for b in model.buffers())
    assert P.weights_precision(model) == "bf16"
    assert P.weights_precision(build_model("v6", **TINY)) == "fp32"


# ---------------------------------------------------------------- accuracy on a synthetic archive
@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory):
    """About 40 radiographs of a `chextriev synth` archive at 128 px, with their true boxes."""
    from chextriev.io.images import load_image
    from chextriev.io.synthetic import read_archive
    from chextriev.synth.writer import SynthConfig, write_archive

    out = tmp_path_factory.mktemp("precision-synth")
    write_archive(SynthConfig(out=out, patients=24, seed=3, size=128, dicom_share=0.2), progress=False)
    records = read_archive(out)
    return [load_image(r.source) for r in records], [r.boxes for r in records]


def _embed_both(model, images, boxes):
    from chextriev.checkpoint import LoadedModel
    from chextriev.embedding import embed_images

    fp32 = LoadedModel.from_model(copy.deepcopy(model), precision="fp32")
    bf16 = LoadedModel.from_model(copy.deepcopy(model), precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    return embed_images(fp32, images, boxes, batch_size=8), embed_images(bf16, images, boxes, batch_size=8)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the top-``k`` neighbours (self excluded) that two embeddings agree on."""
    def neighbours(e):
        similarity = e @ e.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :k]

    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(neighbours(a), neighbours(b))]))


@pytest.mark.slow
def test_bf16_embeddings_match_fp32_on_a_resnet50_v6(synthetic_images):
    """The default architecture's pieces (ResNet50 roi trunk, V6 graph) at a small size."""
    from chextriev.model import build_model

    torch.manual_seed(0)
    model = build_model("v6", image_size=128, width=256, ff_width=512).eval()
    images, boxes = synthetic_images
    fp32, bf16 = _embed_both(model, images, boxes)
    assert len(images) >= 30
    assert bf16.embeddings.dtype == np.float32 and bf16.region_probabilities.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16.embeddings, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(fp32.embeddings * bf16.embeddings, axis=1)
    assert cosine.min() >= 0.999, cosine.min()
    assert top_k_overlap(fp32.embeddings, bf16.embeddings, k=10) >= 0.95
    assert np.abs(fp32.probabilities - bf16.probabilities).max() < 0.02
    assert not np.array_equal(fp32.embeddings, bf16.embeddings)  # bf16 really ran


def test_bf16_embeddings_match_fp32_on_the_tiny_model(synthetic_images):
    from chextriev.model import TINY, build_model

    torch.manual_seed(0)
    model = build_model("v6", **TINY).eval()
    images, boxes = synthetic_images
    fp32, bf16 = _embed_both(model, images, boxes)
    cosine = np.sum(fp32.embeddings * bf16.embeddings, axis=1)
    assert cosine.min() >= 0.999, cosine.min()
    assert top_k_overlap(fp32.embeddings, bf16.embeddings, k=10) >= 0.95


def test_embed_images_reports_its_stage_timings(synthetic_images):
    from chextriev.checkpoint import LoadedModel
    from chextriev.embedding import embed_images
    from chextriev.model import TINY, build_model

    images, _ = synthetic_images
    timings: dict[str, float] = {}
    embed_images(LoadedModel.from_model(build_model("v6", **TINY)), images[:2], timings=timings)
    assert set(timings) == {"boxes", "model"} and all(v >= 0 for v in timings.values())
    assert timings["model"] > 0


# ---------------------------------------------------------------- the detector and Grad-CAM follow
def _conv_dtypes(module: torch.nn.Module) -> tuple[list[torch.dtype], list]:
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, hooks


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_detector_runs_in_its_precision(tmp_path, precision):
    from chextriev.anatomy.detector import AnatomyDetector
    from chextriev.anatomy.detector_nets import DetectorConfig

    path = AnatomyDetector(DetectorConfig(backbone="small", image_size=64)).save(tmp_path / "det.pt")
    detector = AnatomyDetector.load(path, precision=precision)
    assert detector.precision == precision
    seen, hooks = _conv_dtypes(detector.network)
    (boxes, scores), = detector.predict([np.random.default_rng(0).random((80, 64), dtype=np.float32)])
    for hook in hooks:
        hook.remove()
    assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert boxes.shape == (18, 4) and boxes.dtype == np.float32 and scores.dtype == np.float32


def test_load_checkpoint_gives_the_detector_its_precision(tmp_path, synthetic_images):
    from chextriev.anatomy.detector import AnatomyDetector
    from chextriev.anatomy.detector_nets import DetectorConfig
    from chextriev.checkpoint import load_checkpoint
    from chextriev.training.quick import synthetic_records, train_tiny_checkpoint

    records = synthetic_records(tmp_path / "records", n=8, size=64)
    checkpoint = train_tiny_checkpoint(records, tmp_path / "run", variant="v6", max_epochs=1)
    detector = AnatomyDetector(DetectorConfig(backbone="small", image_size=64)).save(tmp_path / "det.pt")
    loaded = load_checkpoint(checkpoint, detector_path=detector, precision="bf16")
    assert loaded.precision == "bf16" and loaded.box_provider.detector.precision == "bf16"
    assert load_checkpoint(checkpoint).precision == "fp32"  # the library default: the reference


def test_gradcam_follows_the_model_precision(synthetic_images):
    from chextriev.checkpoint import LoadedModel
    from chextriev.localization import heatmap
    from chextriev.model import TINY, build_model

    torch.manual_seed(0)
    model = build_model("v6", **dict(TINY, image_size=128)).eval()
    image, boxes = synthetic_images[0][0], synthetic_images[1][0]
    maps = {}
    for precision in ("fp32", "bf16"):
        loaded = LoadedModel.from_model(copy.deepcopy(model), precision=precision)
        seen, hooks = _conv_dtypes(loaded.model)
        maps[precision] = heatmap(loaded, image, boxes, "lung opacity", method="gradcam")
        for hook in hooks:
            hook.remove()
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
        # a network handed over without its LoadedModel runs in its weights' precision
        assert heatmap(loaded.model, image, boxes, "lung opacity").shape == image.shape
    assert maps["bf16"].dtype == np.float32 and maps["bf16"].shape == image.shape
    if maps["fp32"].std() > 0:
        assert np.corrcoef(maps["fp32"].ravel(), maps["bf16"].ravel())[0, 1] > 0.95


# ---------------------------------------------------------------- auto checks bf16 on the first batch
@pytest.fixture()
def tiny_v6_checkpoint(tmp_path):
    from chextriev.checkpoint import save_model_checkpoint
    from chextriev.model import TINY, build_model

    torch.manual_seed(0)
    model = build_model("v6", **dict(TINY, image_size=128))
    return save_model_checkpoint(tmp_path / "tiny.ckpt", model, variant="v6")


@pytest.mark.parametrize("threshold, kept", [(0.0, "bf16"), (1.01, "fp32")])
def test_auto_keeps_bf16_only_when_the_first_batch_agrees(monkeypatch, caplog, tiny_v6_checkpoint,
                                                         synthetic_images, threshold, kept):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images

    monkeypatch.setattr(P, "_proc_cpuinfo_flags", lambda: P.parse_cpuinfo_flags(ZEN4))
    monkeypatch.setattr(P, "BF16_MIN_COSINE", threshold)
    images, boxes = synthetic_images
    loaded = load_checkpoint(tiny_v6_checkpoint, precision="auto")
    assert loaded.precision == "bf16" and loaded.verify_bf16
    assert P.weights_precision(loaded.model) == "fp32"  # weights untouched until the check
    reference = embed_images(load_checkpoint(tiny_v6_checkpoint, precision="fp32"), images[:6], boxes[:6])
    with caplog.at_level(logging.INFO, logger="chextriev.checkpoint"):
        first = embed_images(loaded, images[:4], boxes[:4], batch_size=4)
    assert not loaded.verify_bf16 and loaded.precision == kept
    assert P.weights_precision(loaded.model) == kept
    assert ("bf16 kept" if kept == "bf16" else "running in fp32") in caplog.text
    np.testing.assert_allclose(first.embeddings, reference.embeddings[:4], atol=1e-5)  # the checked batch: fp32
    later = embed_images(loaded, images[4:6], boxes[4:6])
    cosine = np.sum(later.embeddings * reference.embeddings[4:6], axis=1)
    assert cosine.min() >= 0.999 and (kept == "bf16") == (not np.allclose(cosine, 1.0, atol=1e-7))
    from chextriev.localization import heatmap

    # Grad-CAM differentiates through the weights the check converted (under inference mode)
    assert heatmap(loaded, images[0], boxes[0], "lung opacity").shape == images[0].shape


def test_explicit_precisions_are_not_checked(tiny_v6_checkpoint):
    from chextriev.checkpoint import load_checkpoint

    assert not load_checkpoint(tiny_v6_checkpoint, precision="bf16").verify_bf16
    assert not load_checkpoint(tiny_v6_checkpoint, precision="fp32").verify_bf16


def test_min_cosine():
    a = np.eye(3, dtype=np.float32)
    assert P.min_cosine(a, a) == pytest.approx(1.0)
    assert P.min_cosine(a, -a) == pytest.approx(-1.0)
    assert P.min_cosine(np.zeros((0, 3)), np.zeros((0, 3))) == 1.0


def test_describe_says_what_runs_and_why(monkeypatch):
    monkeypatch.setattr(P, "_proc_cpuinfo_flags", lambda: P.parse_cpuinfo_flags(ZEN4))
    assert P.describe("auto", "cpu") == "bf16 (CPU avx512_bf16; asked: auto)"
    monkeypatch.setattr(P, "_proc_cpuinfo_flags", lambda: P.parse_cpuinfo_flags(SKYLAKE))
    assert P.describe("auto", "cpu") == "fp32 (CPU without native bf16; asked: auto)"
    assert P.describe("bf16", "cpu", resolved="bf16").startswith("bf16 (")
