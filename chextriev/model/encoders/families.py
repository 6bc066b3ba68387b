"""The encoder modules: each family's own library network, split into what CheXtriev needs.

An :class:`EncoderTrunk` maps the normalised ``(B, 3, S, S)`` input to

* the **global** feature ``(B, G)``: the model's own image embedding (DINOv2: the CLS token
  after the final layer norm, ``pooler_output``; SigLIP: the attention-pooling head's output,
  ``pooler_output``; open_clip: the image tower's output, the projected CLS token), and
* the **token grid** ``(B, D, h, w)``: the final patch tokens (after the last norm), row-major
  as the patches lie in the image (``h = w = S / patch``),

computed by the library's own forward (nothing re-implemented). :meth:`EncoderTrunk.to_global_space`
maps pooled region tokens ``(..., D)`` into the global feature's space ``(..., G)`` the way the
model maps its own tokens there: the identity for DINOv2 (its CLS and patch tokens share the
final norm's space), the image projection for open_clip (linear: projecting a RoIAlign average
of tokens equals averaging projected tokens), and SigLIP's attention-pooling head applied to the
region's pooled token as a one-token sequence. For the CLIP families that space is the joint
image-text space, which is what lets a text embedding score regions.

Text towers (:class:`TextTower`) hold the library's text network: SigLIP's ``SiglipTextModel``
(``pooler_output``), open_clip's ``HFTextEncoder`` (BiomedCLIP's PubMedBERT, configured from the
weights' shapes instead of fetching its config by name) or open_clip's ``TextTransformer``
(OpenAI CLIP, CheXzero).

The module attribute names mirror the libraries' (``model``, ``visual``, ``text``) so that a
checkpoint's state dict reads like the library's.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

# Never reach a hub: every file comes from the user's folder (set before transformers and
# huggingface_hub read their settings; every call below also passes local_files_only).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@contextlib.contextmanager
def skip_init(enabled: bool = True):
    """Build a network without its random initialisation (its weights are loaded next)."""
    if not enabled:
        yield
        return
    from transformers.initialization import no_init_weights

    with no_init_weights():
        yield


def _grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, N, D)`` patch tokens in row-major patch order -> ``(B, D, h, w)`` (``h x w = N``)."""
    batch, count, dim = tokens.shape
    patch_h = height
    patch_w = width
    if patch_h * patch_w != count:
        raise ValueError(f"{count} patch tokens do not form a {patch_h} x {patch_w} grid")
    return tokens.transpose(1, 2).reshape(batch, dim, patch_h, patch_w)


class EncoderTrunk(nn.Module):
    """Base class (see the module docstring). ``eager_reason``: why ``--compile`` leaves this
    trunk eager (None: it is compiled like a CNN's)."""

    family = ""
    patch_size = 0
    token_dim = 0
    global_dim = 0
    eager_reason: str | None = None

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def to_global_space(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grid_shape(self, side: int) -> tuple[int, int]:
        return side // self.patch_size, side // self.patch_size


class Dinov2Trunk(EncoderTrunk):
    family = "dinov2"

    def __init__(self, architecture: dict[str, Any], model: nn.Module | None = None, init: bool = True):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        if model is None:
            with skip_init(not init):
                model = Dinov2Model(Dinov2Config(**_clean(architecture)))
        self.model = model
        config = model.config
        self.patch_size = int(config.patch_size)
        self.token_dim = self.global_dim = int(config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixels)
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        return out.pooler_output, _grid(out.last_hidden_state[:, 1:], h, w)

    def to_global_space(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


class SiglipTrunk(EncoderTrunk):
    family = "siglip"

    def __init__(self, architecture: dict[str, Any], model: nn.Module | None = None, init: bool = True):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if model is None:
            with skip_init(not init):
                model = SiglipVisionModel(SiglipVisionConfig(**_clean(architecture)))
        self.model = model
        config = model.config
        if not getattr(config, "vision_use_head", True):
            raise ValueError("SigLIP image towers without their attention-pooling head are not supported")
        self.patch_size = int(config.patch_size)
        self.token_dim = self.global_dim = int(config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixels)
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        return out.pooler_output, _grid(out.last_hidden_state, h, w)

    def to_global_space(self, tokens: torch.Tensor) -> torch.Tensor:
        head = getattr(self.model, "vision_model", self.model).head  # transformers 4 nests it, 5 does not
        flat = tokens.reshape(-1, 1, tokens.shape[-1])
        return head(flat).reshape(*tokens.shape[:-1], -1)


class OpenClipTrunk(EncoderTrunk):
    """open_clip's image tower: a timm ViT (``TimmModel``, BiomedCLIP) or open_clip's own
    ``VisionTransformer`` (OpenAI CLIP, CheXzero)."""

    family = "open_clip"

    def __init__(self, architecture: dict[str, Any], model: nn.Module | None = None, init: bool = True):
        super().__init__()
        if model is None:
            model = build_open_clip_visual(architecture)
        self.visual = model
        self.timm = hasattr(model, "trunk")
        if self.timm:
            trunk = model.trunk
            if not hasattr(trunk, "forward_features") or not hasattr(trunk, "num_prefix_tokens"):
                raise ValueError(f"open_clip timm image tower {type(trunk).__name__} is not a ViT")
            self.patch_size = int(trunk.patch_embed.patch_size[0])
            self.token_dim = int(trunk.num_features)
        else:
            if getattr(model, "attn_pool", None) is not None or getattr(model, "pool_type", "tok") != "tok" \
                    or getattr(model, "final_ln_after_pool", False):
                raise ValueError("open_clip image towers with attentional or average pooling are not supported")
            self.patch_size = int(model.patch_size[0])
            self.token_dim = int(model.conv1.out_channels)
            self.eager_reason = ("open_clip's own ViT (OpenAI CLIP, CheXzero) ran 3 to 20x slower compiled than eager in "
                                 "bf16 on the CPU (BENCHMARKS.md 'Foundation encoders')")
        self.global_dim = int(architecture["embed_dim"])

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        if self.timm:
            trunk = self.visual.trunk
            features = trunk.forward_features(pixels)
            pooled = self.visual.head(trunk.forward_head(features))
            return pooled, _grid(features[:, trunk.num_prefix_tokens:], h, w)
        self.visual.output_tokens = True
        pooled, tokens = self.visual(pixels)
        return pooled, _grid(tokens, h, w)

    def to_global_space(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.timm:
            return self.visual.head(tokens)
        return tokens @ self.visual.proj


TRUNKS: dict[str, type[EncoderTrunk]] = {"dinov2": Dinov2Trunk, "siglip": SiglipTrunk, "open_clip": OpenClipTrunk}


def build_open_clip_visual(architecture: dict[str, Any]) -> nn.Module:
    """open_clip's image tower for an open_clip ``model_cfg`` (timm towers never download)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    vision = dict(architecture["vision_cfg"])
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    return _build_vision_tower(int(architecture["embed_dim"]), CLIPVisionCfg(**vision),
                               quick_gelu=bool(architecture.get("quick_gelu", False)))


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers config dict without the fields that describe a saved file rather than the
    network (they would only warn)."""
    drop = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype", "_attn_implementation_autoset"}
    return {k: v for k, v in config.items() if k not in drop}


# ---------------------------------------------------------------------------------- text towers
class TextTower(nn.Module):
    """A text network in its library's layout: ``forward(token ids (n, L)) -> (n, E)`` (not
    normalised), in the joint space of the image tower's global feature. The tokenizer lives in
    :mod:`chextriev.model.encoders.text`."""

    kind = ""
    context_length = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SiglipText(TextTower):
    kind = "siglip"

    def __init__(self, architecture: dict[str, Any], model: nn.Module | None = None, init: bool = True):
        super().__init__()
        from transformers import SiglipTextConfig, SiglipTextModel

        if model is None:
            with skip_init(not init):
                model = SiglipTextModel(SiglipTextConfig(**_clean(architecture)))
        self.model = model
        self.context_length = int(model.config.max_position_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).pooler_output


class OpenClipHFText(TextTower):
    """open_clip's ``HFTextEncoder`` with a BERT whose config comes from the architecture dict
    (``hf_config``), never fetched by the model name in ``open_clip_config.json``."""

    kind = "hf"

    def __init__(self, architecture: dict[str, Any], model: nn.Module | None = None, init: bool = True):
        super().__init__()
        if model is None:
            from open_clip.hf_model import HFTextEncoder
            from transformers import BertConfig

            text = architecture["text_cfg"]
            with skip_init(not init):
                model = HFTextEncoder(text.get("hf_model_name", "bert"), output_dim=int(architecture["embed_dim"]),
                                      config=BertConfig(**_clean(architecture["hf_config"])),
                                      pooler_type=text.get("hf_pooler_type", "mean_pooler"),
                                      proj_type=text.get("hf_proj_type", "mlp"), pretrained=False)
            if text.get("hf_pooler_type", "mean_pooler") != "cls_pooler":
                model.transformer.pooler = None  # unused (open_clip builds it without one too)
        self.text = model
        self.context_length = int(architecture["text_cfg"].get("context_length", 77))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)


class OpenClipNativeText(TextTower):
    """open_clip's ``TextTransformer`` (the OpenAI CLIP text tower)."""

    kind = "openai"

    def __init__(self, architecture: dict[str, Any], model: nn.Module | None = None, init: bool = True):
        super().__init__()
        if model is None:
            from open_clip.model import CLIPTextCfg, _build_text_tower

            model = _build_text_tower(int(architecture["embed_dim"]), CLIPTextCfg(**architecture["text_cfg"]),
                                      quick_gelu=bool(architecture.get("quick_gelu", False)))
        self.text = model
        self.context_length = int(architecture["text_cfg"].get("context_length", 77))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)


def build_text_tower(family: str, architecture: dict[str, Any], init: bool = True) -> TextTower:
    """The text tower of an encoder's architecture dict (random init unless weights follow)."""
    if family == "siglip":
        return SiglipText(architecture["text_config"], init=init)
    if family == "open_clip":
        if "hf_model_name" in architecture.get("text_cfg", {}):
            return OpenClipHFText(architecture, init=init)
        return OpenClipNativeText(architecture, init=init)
    raise ValueError(f"encoder family {family!r} has no text tower")


def build_trunk(family: str, architecture: dict[str, Any], init: bool = True) -> EncoderTrunk:
    """The image trunk of an encoder's architecture dict (random init unless weights follow).

    ``architecture``: DINOv2 — a ``Dinov2Config`` dict; SigLIP — ``{"vision_config": ...,
    "text_config": ... | None}``; open_clip — its ``model_cfg``."""
    if family == "siglip":
        return SiglipTrunk(architecture["vision_config"], init=init)
    return TRUNKS[family](architecture, init=init)
