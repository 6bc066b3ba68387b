"""Tiny randomly initialised encoders written in each library's own format (for the tests).

Each writer builds a network of the real architecture class with a tiny config (width 32-64,
2 layers, 56-160 px inputs), initialises it randomly from a seed, and saves it exactly as the
library saves it:

* :func:`write_dinov2` — ``transformers`` ``Dinov2Model.save_pretrained`` + ``BitImageProcessor``
  (RAD-DINO's processor class) ``save_pretrained``;
* :func:`write_siglip` — ``SiglipModel.save_pretrained`` + ``SiglipImageProcessor`` + a
  ``SiglipTokenizer`` over a tiny sentencepiece model trained here;
* :func:`write_open_clip` — BiomedCLIP's hub folder: ``open_clip_config.json`` naming the hub's
  BERT (``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``), ``open_clip_pytorch_model.bin``
  (the state dict of open_clip's ``CustomTextCLIP`` with a timm ``test_vit`` image tower and a
  tiny BERT), and the BERT tokenizer files; plus, for the reference, a second folder whose config
  names a local BERT config so that open_clip itself can build the model without a network;
* :func:`write_openai_clip` — a plain OpenAI-CLIP state dict ``.pt`` of open_clip's ``CLIP``
  (the OpenAI layout), its values rounded to float16 as OpenAI's releases are (open_clip's own
  OpenAI loader passes them through float16).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["pleural", "effusion", "left", "right", "lung", "base", "opacity", "consolidation", "cardiomegaly", "heart", "enlarged", "pneumothorax", "apex", "atelectasis", "lobe", "nodule", "mass", "no", "acute", "finding", "clear", "lungs", "small", "large", "bilateral", "mild", "moderate", "severe", "edema", "interstitial", "markings", "the", "of", "and", "with", "in", "a", "is"]
BERT_NAME = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def write_dinov2(folder: Path, *, seed: int = 0, image_size: int = 56, hidden: int = 32) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    _seed(seed)
    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          patch_size=14, image_size=image_size, layerscale_value=0.5)
    Dinov2Model(config).eval().save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                      do_center_crop=True, resample=3, image_mean=[0.5307] * 3, image_std=[0.2583] * 3
                      ).save_pretrained(folder)
    return folder


def _sentencepiece(folder: Path) -> Path:
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    sentences = [" ".join(WORDS[i:i + 6]) for i in range(0, len(WORDS), 3)] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(folder / "spiece"),
                                   vocab_size=64, model_type="unigram", character_coverage=1.0,
                                   minloglevel=2, hard_vocab_limit=False)
    return folder / "spiece.model"


def write_siglip(folder: Path, *, seed: int = 0, image_size: int = 64, text: bool = True) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = SiglipTokenizer(vocab_file=str(_sentencepiece(folder.parent / f"{folder.name}-spm")))
    _seed(seed)
    config = SiglipConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                     "vocab_size": len(tokenizer), "max_position_embeddings": 16, "pad_token_id": tokenizer.pad_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None},
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": image_size, "patch_size": 16})
    SiglipModel(config).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=2, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(folder)
    if text:
        tokenizer.save_pretrained(folder)
    return folder


def _bert_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]) + "\n")
    return BertTokenizer(vocab_file=str(vocab), do_lower_case=True)


def write_open_clip(folder: Path, *, seed: int = 0, context_length: int = 32) -> tuple[Path, Path]:
    """``(hub folder, reference folder)``: the reference folder holds the same weights with a
    config whose text tower names a local BERT config folder (open_clip's own loader needs one)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _bert_tokenizer(folder.parent / f"{folder.name}-vocab")
    bert = folder.parent / f"{folder.name}-bert-config"
    bert.mkdir(parents=True, exist_ok=True)
    (bert / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 1, "intermediate_size": 128, "max_position_embeddings": 64, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0}))
    vision = {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
              "image_size": 160}
    text = {"hf_model_name": BERT_NAME, "hf_tokenizer_name": BERT_NAME, "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": context_length}
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    reference = folder.parent / f"{folder.name}-reference"
    reference.mkdir(parents=True, exist_ok=True)
    local_text = {**text, "hf_model_name": str(bert), "hf_tokenizer_name": str(bert)}
    (reference / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 32, "vision_cfg": vision, "text_cfg": local_text}, "preprocess_cfg": preprocess}))
    _seed(seed)
    model = open_clip.create_model(f"local-dir:{reference}", pretrained_text=False)
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, reference / "open_clip_pytorch_model.bin")
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}, "preprocess_cfg": preprocess}))
    tokenizer.save_pretrained(folder)
    return folder, reference


def write_openai_clip(path: Path, *, seed: int = 0) -> Path:
    import open_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    model = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 128, "layers": 2, "width": 64, "patch_size": 32,
                                                     "head_width": 64},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
                           quick_gelu=True)
    state = {k: v.half().float() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path
