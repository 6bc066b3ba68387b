"""Where a text points in an image: the similarity of each patch token to a text embedding.

For a CLIP-family encoder model (``LoadedModel.text_encoder`` not None), each final patch token
is mapped into the joint image-text space as the model maps its own tokens there
(:meth:`~chextriev.model.encoders.families.EncoderTrunk.to_global_space`), and its cosine to the
text's embedding is the token's score; the region scores are the same cosine for the 18 anatomy
region embeddings (:func:`region_scores`). What the server's text search (``POST /api/v1/search/text``) draws:

>>> heat = text_heatmap(loaded, image, "left pleural effusion")   # doctest: +SKIP
>>> scores = region_scores(loaded, batch.region_embeddings[0], "left pleural effusion")  # doctest: +SKIP

:func:`text_search_note` says, in words, why a model cannot do either (``None`` when it can):
the server's ``/readyz`` and its 409 answers, and ``chextriev evaluate``, report it.

The token map is carried back to the image's pixels through the encoder's own resize / crop /
letterbox (as Grad-CAM's is) and min-max scaled to [0, 1]; raw cosines come back from
:func:`token_similarities`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chextriev.errors import ChextrievError


class TextSearchUnsupportedError(ChextrievError):
    """The model has no text tower in its embedding's space."""


def _text_vector(loaded, text: str | np.ndarray) -> np.ndarray:
    if isinstance(text, str):
        encoder = loaded.text_encoder
        if encoder is None:
            raise TextSearchUnsupportedError(text_search_note(loaded))
        return encoder.embed([text])[0]
    vector = np.asarray(text, np.float32).reshape(-1)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@torch.inference_mode()
def token_similarities(loaded, image: np.ndarray, text: str | np.ndarray) -> np.ndarray:
    """``(h, w)`` cosines of the image's patch tokens (in the joint space) to ``text`` (a string,
    or an embedding from ``loaded.text_encoder``)."""
    from chextriev.model.preprocess import encoder_input
    from chextriev.precision import autocast

    vector = torch.from_numpy(_text_vector(loaded, text))
    model = loaded.model
    spec = encoder_input(model.config)
    pixels = spec.prepare(np.asarray(image, np.float32))[None].to(loaded.device)
    with autocast(loaded.precision, loaded.device):
        _, grid = model.features.encode(pixels)
        tokens = grid[0].flatten(1).T  # (h*w, D), row-major patches
        joint = model.features.trunk.to_global_space(tokens)
    scores = F.normalize(joint.float(), dim=-1).cpu() @ vector
    return scores.reshape(grid.shape[-2], grid.shape[-1]).numpy()


def text_heatmap(loaded, image: np.ndarray, text: str | np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: :func:`token_similarities` at the image's pixels, min-max
    scaled (the most similar token 1, the least 0; 0 where the encoder's input shows nothing)."""
    from chextriev.localization.cam import _through_input
    from chextriev.model.preprocess import encoder_input

    array = np.asarray(image, np.float32)
    raw = torch.from_numpy(token_similarities(loaded, array, text))
    raw = raw - raw.min()
    peak = float(raw.max())
    if peak > 0:
        raw = raw / peak
    return _through_input(raw, array.shape[:2], encoder_input(loaded.model.config)).clamp(0, 1).numpy()


def region_scores(loaded, region_embeddings: np.ndarray, texts: str | Sequence[str] | np.ndarray) -> np.ndarray:
    """``(n_texts, 18)`` cosines of an image's region embeddings ``(18, G)`` (as
    ``embed_images`` returns them; zero rows for missing regions score 0) to each text (strings,
    or ``(n, G)`` text embeddings from ``loaded.text_encoder``, normalised here)."""
    note = text_search_note(loaded)
    if note is not None:
        raise TextSearchUnsupportedError(note)
    if isinstance(texts, np.ndarray):
        vectors = np.atleast_2d(np.asarray(texts, np.float32))
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    else:
        vectors = loaded.text_encoder.embed([texts] if isinstance(texts, str) else list(texts))
    return vectors @ np.asarray(region_embeddings, np.float32).T


def text_search_note(loaded) -> str | None:
    """Why ``loaded`` cannot search its index by text or point at regions by text, in words;
    ``None`` when it can (a text encoder in the space of its embedding, and of its region
    embeddings: a CLIP-family encoder model from ``chextriev model init`` with its joint
    embedding kept as the encoder gives it)."""
    config = loaded.config
    families = "BiomedCLIP, CheXzero or MedSigLIP"
    try:
        encoder = loaded.text_encoder
    except ChextrievError as error:  # e.g. the checkpoint's tokenizer files are unusable
        return f"this model's text encoder cannot be loaded: {error}"
    if encoder is None:
        if config.kind != "encoder":
            return (f"this model ({loaded.variant or config.kind} on {config.backbone}) has no text encoder: text search "
                    f"needs a label-free CLIP-family encoder model (chextriev model init --backbone biomedclip, "
                    f"chexzero or medsiglip), whose image and text towers share one embedding space")
        if not (config.encoder or {}).get("text"):
            return (f"the {config.backbone} encoder has no text tower (text search needs a CLIP-family encoder: "
                    f"{families})")
        if config.standardize:
            return (f"this {config.backbone} model's embedding is standardised (chextriev model init --standardize "
                    "on), which takes it out of the joint image-text space: make the checkpoint with --standardize "
                    "auto for text search")
        return f"this {config.backbone} model carries no text tower in its checkpoint"
    if not loaded.regions_in_text_space:
        return (f"this {config.backbone} model's region embeddings are not in its text encoder's space, so a text "
                "cannot point at regions")
    return None
