"""The encoder table: chest X-ray foundation encoders usable as backbones (plain data, no torch).

Each entry names a family (the library and architecture class that builds it), where its
weights are published, their licence, the layout of the files the user downloads, the model
card's input preparation (used when the files ship none, and for random initialisation), and a
default architecture (for a randomly initialised encoder of the same shape: tests and
benchmarks; real use passes ``--backbone-weights``).

Families (:data:`FAMILIES`):

* ``dinov2`` — ``transformers`` ``Dinov2Model``: a ``save_pretrained`` folder (``config.json``,
  ``model.safetensors`` or ``pytorch_model.bin``, ``preprocessor_config.json``) or a hub-cache
  snapshot. Global feature: the CLS token after the final layer norm (``pooler_output``);
  tokens: the patch tokens after the same norm.
* ``siglip`` — ``transformers`` ``SiglipModel`` (image and text towers) or a vision-only
  ``SiglipVisionModel`` folder. Global feature: the attention-pooling head's output
  (``pooler_output``, the joint image-text space); tokens: the patch tokens after the post
  layer norm.
* ``open_clip`` — an ``open_clip`` model: BiomedCLIP's hub folder (``open_clip_config.json``,
  ``open_clip_pytorch_model.bin`` or ``.safetensors``, the text tower's tokenizer files), or an
  OpenAI-CLIP state dict ``.pt`` (CheXzero) whose architecture is read from its tensor shapes.
  Global feature: the image tower's projected CLS token (the joint space); tokens: the patch
  tokens after the final norm, before the projection.

Adding an encoder of a known family is one :class:`EncoderEntry` in :data:`ENCODERS`; the
generic entries (``dinov2``, ``siglip``, ``open-clip``, ``openai-clip``) take any checkpoint of
their family (they have no default architecture: ``--backbone-weights`` is required).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAMILIES = ("dinov2", "siglip", "open_clip")
#: How the user's weights are laid out on disk.
LAYOUTS = ("transformers", "open_clip", "openai_state_dict")

#: Input preparation fields (see :mod:`chextriev.model.encoders.inputs`).
RESIZE_MODES = ("shortest", "square", "letterbox")
RESAMPLES = ("nearest", "bilinear", "bicubic", "lanczos")
RESIZE_BACKENDS = ("pil", "torchvision")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder of the table (see the module docstring)."""

    name: str
    title: str
    family: str
    layout: str
    source: str  # where to download the weights
    licence: str
    text: bool  # the release has a text tower in the same files (CLIP families)
    input: dict[str, Any]  # the model card's input preparation (InputSpec fields)
    architecture: dict[str, Any] | None = None  # default architecture (random init); None: weights required
    patch_size: int | None = None  # expected patch size (None: any)
    notes: str = ""
    dims: tuple[int, int] | None = None  # (token dim, global dim) of the default architecture

    @property
    def native_size(self) -> int:
        """The side of the square model input."""
        spec = self.input
        return int(spec.get("then_size") or spec.get("crop") or spec["size"])


_RAD_DINO_INPUT = {"resize": "shortest", "size": 518, "resample": "bicubic", "backend": "torchvision",
                   "crop": 518, "crop_rounding": "floor", "mean": (0.5307,) * 3, "std": (0.2583,) * 3}
_SIGLIP_INPUT = {"resize": "square", "size": 448, "resample": "bilinear", "backend": "torchvision",
                 "mean": (0.5,) * 3, "std": (0.5,) * 3}
_BIOMEDCLIP_INPUT = {"resize": "shortest", "size": 224, "resample": "bicubic", "backend": "pil",
                     "crop": 224, "crop_rounding": "round", "mean": OPENAI_MEAN, "std": OPENAI_STD}
# CheXzero's own pipeline: each image letterboxed into 320 x 320 (longest side to 320 with PIL's
# antialiasing filter, black padding, the image centred), then resized to 224 bicubic on the
# float tensor and normalised with its training set's grey statistics (101.48761, 83.43944 on
# the 0-255 scale).
_CHEXZERO_INPUT = {"resize": "letterbox", "size": 320, "resample": "lanczos", "backend": "pil",
                   "then_size": 224, "then_resample": "bicubic",
                   "mean": (101.48761 / 255,) * 3, "std": (83.43944 / 255,) * 3}

_DINOV2_BASE = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layerscale_value": 1.0,
                "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False, "hidden_act": "gelu"}
_SIGLIP_400M_VISION = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                       "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 16, "image_size": 448,
                       "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
_BIOMEDCLIP_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 224},
}
_OPENAI_B32_CFG = {
    "embed_dim": 512, "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32, "head_width": 64},
}

ENCODERS: dict[str, EncoderEntry] = {
    "rad-dino": EncoderEntry(
        "rad-dino", "RAD-DINO (Microsoft Health Futures; DINOv2 ViT-B/14 on chest X-rays)", "dinov2",
        "transformers", "https://huggingface.co/microsoft/rad-dino",
        "MIT (current revision; earlier revisions MSRLA); research use only, not for clinical practice (model card)",
        text=False, input=_RAD_DINO_INPUT, architecture=_DINOV2_BASE, patch_size=14,
        dims=(768, 768), notes="518 px, 37 x 37 patch tokens + CLS; the model card retrieves with the CLS token"),
    "biomedclip": EncoderEntry(
        "biomedclip", "BiomedCLIP (Microsoft; ViT-B/16 + PubMedBERT text tower)", "open_clip", "open_clip",
        "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "MIT",
        text=True, input=_BIOMEDCLIP_INPUT, architecture=_BIOMEDCLIP_CFG, patch_size=16,
        dims=(768, 512), notes="224 px, 14 x 14 patch tokens; text up to 256 tokens"),
    "chexzero": EncoderEntry(
        "chexzero", "CheXzero (Stanford; OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR reports)", "open_clip",
        "openai_state_dict", "https://github.com/rajpurkarlab/CheXzero (checkpoints linked from its README)",
        "the release's own terms (code MIT; read the weights' terms in the repository before use)",
        text=True, input=_CHEXZERO_INPUT, architecture=_OPENAI_B32_CFG, patch_size=32,
        dims=(768, 512),
        notes="224 px, 7 x 7 patch tokens; text up to 77 tokens (OpenAI CLIP BPE, bundled with open_clip)"),
    "medsiglip": EncoderEntry(
        "medsiglip", "MedSigLIP (Google Health AI Developer Foundations; SigLIP 400M image + text)", "siglip",
        "transformers", "https://huggingface.co/google/medsiglip-448",
        "Health AI Developer Foundations terms of use (accept them on the model page)",
        text=True, input=_SIGLIP_INPUT, architecture=_SIGLIP_400M_VISION,
        dims=(1152, 1152),
        notes="448 px; text up to 64 tokens, padded to 64 as the model card does"),
    # generic entries: any checkpoint of the family, weights required
    "dinov2": EncoderEntry(
        "dinov2", "any DINOv2 checkpoint (transformers Dinov2Model folder)", "dinov2", "transformers",
        "e.g. https://huggingface.co/facebook/dinov2-base", "the checkpoint's own", text=False,
        input={**_RAD_DINO_INPUT, "size": 224, "crop": 224, "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225)}),
    "siglip": EncoderEntry(
        "siglip", "any SigLIP checkpoint (transformers SiglipModel folder)", "siglip", "transformers",
        "e.g. https://huggingface.co/google/siglip-base-patch16-224", "the checkpoint's own", text=True,
        input={**_SIGLIP_INPUT, "size": 224}),
    "open-clip": EncoderEntry(
        "open-clip", "any open_clip hub folder (open_clip_config.json + weights)", "open_clip", "open_clip",
        "an open_clip model's hugging face repository", "the checkpoint's own", text=True,
        input=dict(_BIOMEDCLIP_INPUT)),
    "openai-clip": EncoderEntry(
        "openai-clip", "any OpenAI-CLIP ViT state dict (.pt)", "open_clip", "openai_state_dict",
        "an OpenAI-format CLIP ViT checkpoint", "the checkpoint's own", text=True,
        input={"resize": "shortest", "size": 224, "resample": "bicubic", "backend": "pil", "crop": 224,
               "crop_rounding": "round", "mean": OPENAI_MEAN, "std": OPENAI_STD}),
}
ENCODER_NAMES = tuple(ENCODERS)
#: The encoders the README's "Day one" section names (the generic entries aside).
NAMED_ENCODERS = ("rad-dino", "biomedclip", "chexzero", "medsiglip")


def is_encoder(backbone: str) -> bool:
    """True when ``backbone`` names an encoder of the table (not a torchvision CNN)."""
    return backbone in ENCODERS


def default_dims(name: str) -> tuple[int, int]:
    """``(token_dim, global_dim)`` of the named encoder's default architecture (random init)."""
    entry = ENCODERS[name]
    if entry.dims is None:
        raise ValueError(f"encoder {name!r} has no default architecture: pass --backbone-weights")
    return entry.dims


def encoder_spec(entry: EncoderEntry, architecture: dict[str, Any], input_spec: dict[str, Any], token_dim: int,
                 global_dim: int, patch: int, text: dict[str, Any] | None, weights_id: str, source: str | None,
                 weights_file: str | None = None) -> dict[str, Any]:
    """The description of an encoder saved in ``ModelConfig.encoder`` (JSON-friendly):
    ``name``, ``family``, ``layout``, ``architecture`` (the library's config: a ``Dinov2Config``
    dict; ``{"vision_config", "text_config"}`` for SigLIP; open_clip's ``model_cfg``, with
    ``hf_config`` for a BERT text tower), ``input`` (the :class:`InputSpec` fields), ``token_dim``,
    ``global_dim``, ``patch_size``, ``joint`` (the global feature lies in a joint image-text space),
    ``text`` (the text tower's tokenizer kind and context length, or None), ``weights_id`` (the
    weights files' checksum, or ``random-seed<N>``), ``source`` (the files it was read from)."""
    spec = {"name": entry.name, "family": entry.family, "layout": entry.layout, "architecture": architecture,
            "input": dict(input_spec), "token_dim": int(token_dim), "global_dim": int(global_dim),
            "patch_size": int(patch), "joint": entry.family in ("siglip", "open_clip"), "text": text,
            "weights_id": weights_id, "source": source}
    if weights_file:
        spec["weights_file"] = weights_file
    return spec


def default_spec(name: str, seed: int = 0) -> dict[str, Any]:
    """The description of encoder ``name``'s default architecture, randomly initialised from
    ``seed`` (no files: tests and benchmarks)."""
    entry = ENCODERS[name]
    if entry.architecture is None or entry.dims is None:
        raise ValueError(f"encoder {name!r} has no default architecture: pass --backbone-weights")
    architecture = dict(entry.architecture)
    if entry.family == "siglip":
        architecture = {"vision_config": architecture, "text_config": None}
    patch = entry.patch_size or int(entry.architecture.get("patch_size", 16))
    return encoder_spec(entry, architecture, {**entry.input, "source": f"{name} model card"}, entry.dims[0],
                        entry.dims[1], patch, None, f"random-seed{seed}", None)


def input_side(input_spec: dict[str, Any]) -> int:
    """The side of the square model input an input preparation ends at."""
    return int(input_spec.get("then_size") or input_spec.get("crop") or input_spec["size"])
