"""Text embeddings in an encoder's joint image-text space (BiomedCLIP, CheXzero, MedSigLIP).

:class:`TextEncoder` pairs a model's text tower (:mod:`chextriev.model.encoders.families`) with
its own tokenizer, read from the files the checkpoint carries (copied from the user's folder by
``chextriev model init``): SigLIP's ``AutoTokenizer`` (padded to its full 64 tokens, as the
model card does), open_clip's ``HFTokenizer`` (BiomedCLIP's PubMedBERT vocabulary, padded to the
context length, 256), or open_clip's ``SimpleTokenizer`` (OpenAI's BPE, which open_clip ships;
77 tokens). ``embed(texts)`` returns ``(n, E)`` float32 L2-normalised vectors: their inner
product with the model's L2-normalised global image embedding is the model's own image-text
cosine similarity.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chextriev.errors import ChextrievError


class TextEncoderError(ChextrievError):
    """Texts that cannot be embedded (none given, or the tokenizer files are unusable)."""


def build_tokenizer(kind: str, context_length: int, files: dict[str, bytes]):
    """A callable ``texts -> (n, L) int64 token ids`` for a text tower of ``kind``."""
    if kind == "openai":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=context_length)
    if not files:
        raise TextEncoderError(f"the checkpoint has no tokenizer files for its {kind} text tower")
    folder = Path(tempfile.mkdtemp(prefix="chextriev-tokenizer-"))
    try:
        for name, data in files.items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise TextEncoderError(f"unsafe tokenizer file name {name!r} in the checkpoint")
            (folder / name).write_bytes(data)
        if kind == "hf":
            from open_clip.tokenizer import HFTokenizer

            return HFTokenizer(str(folder), context_length=context_length, local_files_only=True)
        if kind == "siglip":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

            def tokenize(texts: Sequence[str]) -> torch.Tensor:
                return tokenizer(list(texts), padding="max_length", max_length=context_length, truncation=True,
                                 return_tensors="pt")["input_ids"]

            return tokenize
        raise TextEncoderError(f"unknown text tower kind {kind!r}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TextEncoder:
    """``embed(texts) -> (n, E)`` float32, L2-normalised, in the space of the image tower's
    global embedding (see the module docstring). Runs the tower in ``precision`` on ``device``."""

    def __init__(self, tower, tokenizer_files: dict[str, bytes], *, device="cpu", precision: str = "fp32",
                 batch_size: int = 32):
        self.tower = tower
        self.kind = tower.kind
        self.context_length = int(tower.context_length)
        self.tokenize = build_tokenizer(self.kind, self.context_length, tokenizer_files)
        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = max(1, int(batch_size))

    @property
    def dim(self) -> int:
        return int(self.embed(["x"]).shape[1])

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from chextriev.precision import autocast

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise TextEncoderError("no texts to embed")
        if any(not isinstance(t, str) for t in texts):
            raise TextEncoderError("texts must be strings")
        self.tower.eval()
        parts = []
        for start in range(0, len(texts), self.batch_size):
            ids = torch.as_tensor(self.tokenize(texts[start:start + self.batch_size])).long().to(self.device)
            with autocast(self.precision, self.device):
                features = self.tower(ids)
            parts.append(F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32))
        return np.concatenate(parts)
