"""Reading an encoder from the user's files, in each library's own format, never from a network.

:func:`resolve_encoder` checks the files and describes the encoder (the dict saved in the
model config: family, architecture, input preparation, dimensions, text tower, weights
identity); :func:`load_encoder` builds the networks with the file's weights. What is accepted:

* ``dinov2`` / ``siglip`` (``transformers``): a ``save_pretrained`` folder — ``config.json``,
  ``model.safetensors`` (or ``pytorch_model.bin``, or their sharded ``*.index.json`` form),
  ``preprocessor_config.json`` (optional: the model card's values otherwise), and for SigLIP's
  text tower the tokenizer files (``tokenizer_config.json`` with ``spiece.model`` or
  ``tokenizer.json``) — or a hub-cache folder (``models--org--name``, its ``snapshots/<rev>``
  chosen by ``refs/main``), read as it is;
* ``open_clip`` hub folder (BiomedCLIP): ``open_clip_config.json``, the weights
  (``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` / ...), and the text tower's
  tokenizer files (``vocab.txt`` / ``tokenizer.json``, ``tokenizer_config.json``). Its text
  tower is a BERT that open_clip would build from a config fetched by name: here the config is
  read from the weights' shapes (BERT's conventions: 64-wide attention heads, 1e-12 layer-norm
  epsilon, GELU);
* OpenAI-CLIP state dict (CheXzero): one ``.pt`` file holding a state dict of OpenAI's CLIP
  (``visual.conv1.weight``, ``visual.proj``, ``token_embedding.weight``, ...); the
  architecture comes from the tensor shapes as OpenAI's own loader reads it (64-wide heads);
  its text tokenizer is OpenAI's BPE, which open_clip ships.

Refused with a :class:`EncoderWeightsError` that says what was expected: a folder of the wrong
kind (with a guess of what it is), a missing weights or config file, a truncated file (the
safetensors header or the zip directory does not match the file's size), a config of another
architecture than the named encoder's, weights that do not fit the config, a pickled model or a
TorchScript archive instead of a state dict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chextriev.errors import UnknownNameError
from chextriev.files import sha256_file
from chextriev.model.backbone import BackboneWeightsError
from chextriev.model.encoders.table import ENCODERS, EncoderEntry, default_spec, encoder_spec

log = logging.getLogger(__name__)


class EncoderWeightsError(BackboneWeightsError):
    """An encoder's files that cannot be read, are of the wrong kind, or do not fit."""


SAFETENSORS = ("model.safetensors",)
TORCH_BINS = ("pytorch_model.bin",)
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                     "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "sentencepiece.bpe.model")
#: The model types a transformers folder of each family may declare.
MODEL_TYPES = {"dinov2": ("dinov2",), "siglip": ("siglip", "siglip_vision_model")}


@dataclass
class EncoderFiles:
    """What :func:`resolve_encoder` found: the description saved in the model config, and the
    tokenizer files (name -> bytes) a text tower needs at load time."""

    spec: dict[str, Any]
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)


# ------------------------------------------------------------------------------- small readers
def _listing(folder: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]" if names else "(empty)"


def hub_snapshot(path: Path) -> Path:
    """``path`` itself, or for a hub-cache folder (``models--org--name``) the snapshot that
    ``refs/main`` names (the only one when there is no ref)."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text().strip()
        if chosen.is_dir():
            return chosen
    revisions = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(revisions) == 1:
        return revisions[0]
    raise EncoderWeightsError(f"{path} is a hub cache folder with {len(revisions)} snapshots and no refs/main: "
                              f"pass the snapshot folder itself ({', '.join(p.name for p in revisions[:5])})")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderWeightsError(f"cannot read {path}: {error} (a truncated or damaged JSON file?)") from error
    if not isinstance(data, dict):
        raise EncoderWeightsError(f"{path} does not hold a JSON object")
    return data


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or foreign ``.safetensors`` file: its 8-byte header length, JSON header
    and the end of the last tensor must account for the file's size exactly."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise EncoderWeightsError(f"{path} is truncated: {size} bytes, not even a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise EncoderWeightsError(f"{path} is truncated or not a safetensors file: its header announces "
                                          f"{length} bytes of metadata, the file has {size}")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderWeightsError(f"{path} is not a safetensors file (unreadable header: {error})") from error
    ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + (max(ends) if ends else 0)
    if expected != size:
        raise EncoderWeightsError(f"{path} is truncated or damaged: its header describes {expected} bytes, the file has "
                                  f"{size} (download it again)")


def check_torch_file(path: Path) -> None:
    """Refuse a truncated torch ``.bin`` / ``.pt`` (zip) file before torch reads it."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            magic = handle.read(2)
        if magic == b"\x80\x02" or magic[:1] == b"\x80":  # a legacy (pre-1.6) pickle: torch checks it itself
            return
        raise EncoderWeightsError(f"{path} is truncated or not a torch file ({path.stat().st_size} bytes; a torch "
                                  "file is a zip archive whose directory sits at its end: download it again)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = archive.testzip() if path.stat().st_size < (64 << 20) else None
    except (zipfile.BadZipFile, OSError) as error:
        raise EncoderWeightsError(f"{path} is damaged: {error}") from error
    if bad is not None:
        raise EncoderWeightsError(f"{path} is damaged: entry {bad} fails its checksum")
    if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
        raise EncoderWeightsError(f"{path} is a TorchScript archive (OpenAI's own release format), not a state dict: "
                                  "save its state dict once, for a file you trust: python -c \"import torch; "
                                  f"torch.save(torch.jit.load('{path}', map_location='cpu').state_dict(), "
                                  f"'{path}.state.pt')\" and pass {path}.state.pt")


def read_tensors(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` or torch state-dict file (``weights_only``), unwrapped
    from ``{"state_dict": ...}`` / ``{"model": ...}`` and a ``module.`` prefix."""
    import pickle

    import torch

    if path.suffix == ".safetensors":
        check_safetensors(path)
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error type for damaged files
            raise EncoderWeightsError(f"cannot read {path}: {error}") from error
    check_torch_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise EncoderWeightsError(f"{path} is not a plain state dict (it pickles Python objects, which are not "
                                  f"read: unpickling runs code); save model.state_dict() once and pass that file. "
                                  f"({str(error).splitlines()[0][:200]})") from error
    except (OSError, RuntimeError, ValueError, EOFError) as error:
        raise EncoderWeightsError(f"cannot read {path}: {str(error).splitlines()[0][:300]} (truncated? download it "
                                  "again)") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


_DIGESTS: dict[tuple[str, int, int], str] = {}


def files_id(paths: list[Path]) -> str:
    """First 16 hex digits of the sha256 of the files' contents (memoised per path, size, mtime)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = sha256_file(path)
        digest.update(_DIGESTS[key].encode())
    return digest.hexdigest()[:16]


def _tokenizer_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}


# ------------------------------------------------------------------------------- folder kinds
def _folder_kind(folder: Path) -> str:
    if (folder / "open_clip_config.json").is_file():
        return "an open_clip folder (open_clip_config.json): --backbone biomedclip or open-clip"
    if (folder / "config.json").is_file():
        try:
            kind = json.loads((folder / "config.json").read_text()).get("model_type", "?")
        except (OSError, json.JSONDecodeError):
            kind = "?"
        return f"a transformers folder of a {kind!r} model"
    return f"neither a transformers nor an open_clip folder; it holds {_listing(folder)}"


def _folder_holding(entry: EncoderEntry, path: Path, marker: str) -> Path:
    """The folder (or hub-cache snapshot) at ``path``, refused unless it holds ``marker`` (the
    config file of the encoder's library), with what it looks like instead."""
    folder = hub_snapshot(path)
    if not folder.is_dir():
        raise EncoderWeightsError(f"--backbone {entry.name} expects {expected_files(entry.name)}; {path} is a file")
    if not (folder / marker).is_file():
        raise EncoderWeightsError(f"{folder} is not what --backbone {entry.name} expects ({expected_files(entry.name)}): "
                                  f"no {marker}; it is {_folder_kind(folder)}")
    return folder


def _entry(name: str) -> EncoderEntry:
    if name not in ENCODERS:
        raise UnknownNameError("encoder", name, ENCODERS)
    return ENCODERS[name]


def _weights_path(name: str, weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if not path.exists():
        raise EncoderWeightsError(f"--backbone-weights {path} does not exist (expected the {name} files: "
                                  f"{expected_files(name)})")
    return path


def expected_files(name: str) -> str:
    """What the user should pass for encoder ``name`` (for messages and --help)."""
    entry = _entry(name)
    if entry.layout == "transformers":
        extra = " + the tokenizer files" if entry.text else ""
        return ("a transformers save_pretrained folder or hub-cache snapshot: config.json, model.safetensors "
                f"(or pytorch_model.bin), preprocessor_config.json{extra}")
    if entry.layout == "open_clip":
        return ("open_clip's hub folder: open_clip_config.json, open_clip_pytorch_model.bin (or a .safetensors "
                "weights file), the tokenizer files (vocab.txt or tokenizer.json, tokenizer_config.json)")
    return "one file: a plain OpenAI-CLIP ViT state dict (.pt), e.g. CheXzero's released checkpoint"


# ------------------------------------------------------------------------------- transformers
def _transformers_weights(folder: Path) -> list[Path]:
    for single in SAFETENSORS + TORCH_BINS:
        if (folder / single).is_file():
            return [folder / single]
        index = folder / f"{single}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                raise EncoderWeightsError(f"{index} lists weight shards that are missing: {missing[:5]}")
            return [folder / s for s in shards]
    raise EncoderWeightsError(f"{folder} has no weights file: expected model.safetensors or pytorch_model.bin (or "
                              f"their sharded .index.json form); it holds {_listing(folder)}")


def _resolve_transformers(entry: EncoderEntry, path: Path, with_text: bool) -> EncoderFiles:
    from chextriev.model.encoders.inputs import from_transformers

    folder = _folder_holding(entry, path, "config.json")
    config = _read_json(folder / "config.json")
    model_type = config.get("model_type")
    allowed = MODEL_TYPES[entry.family]
    if model_type not in allowed:
        raise EncoderWeightsError(f"{folder}/config.json describes a {model_type!r} model; --backbone {entry.name} "
                                  f"expects a {entry.family} model (model_type {' or '.join(allowed)})")
    if entry.family == "siglip":
        vision = config.get("vision_config", config) if model_type == "siglip" else config
        text = config.get("text_config") if model_type == "siglip" else None
    else:
        vision, text = config, None
    patch = vision.get("patch_size")
    if entry.patch_size is not None and patch is not None and int(patch) != entry.patch_size:
        raise EncoderWeightsError(f"{folder}/config.json has patch size {patch}; {entry.name} ({entry.title}) has "
                                  f"patch size {entry.patch_size}: another checkpoint? (use --backbone {entry.family} "
                                  "for any checkpoint of the family)")
    weights = _transformers_weights(folder)
    for file in weights:
        (check_safetensors if file.suffix == ".safetensors" else check_torch_file)(file)
    preprocessor = folder / "preprocessor_config.json"
    try:
        if preprocessor.is_file():
            spec = from_transformers(_read_json(preprocessor), entry.input, source=str(preprocessor))
        else:
            spec = from_transformers({}, entry.input, source=f"{entry.name} model card (no preprocessor_config.json)")
            spec = spec.with_side(int(vision.get("image_size", spec.side)))
            log.warning("%s has no preprocessor_config.json: using %s's model-card preparation %s", folder,
                        entry.name, entry.input)
    except ValueError as error:
        raise EncoderWeightsError(f"{preprocessor}: {error}") from error
    if entry.family == "siglip" and int(vision.get("image_size", spec.side)) != spec.side:
        raise EncoderWeightsError(f"{preprocessor} prepares {spec.side} px inputs, config.json's image tower takes "
                                  f"{vision.get('image_size')} px")
    tokenizer: dict[str, bytes] = {}
    text_spec = None
    if with_text and entry.family == "siglip":
        if text is None:
            log.warning("%s holds a SigLIP image tower only: no text search", folder)
        else:
            tokenizer = _tokenizer_files(folder)
            if "tokenizer_config.json" not in tokenizer or not ({"spiece.model", "tokenizer.json"} & set(tokenizer)):
                raise EncoderWeightsError(
                    f"{folder} has SigLIP's text tower but not its tokenizer files (tokenizer_config.json with "
                    f"spiece.model or tokenizer.json); it holds {_listing(folder)}. Copy them from the model's "
                    "repository, or pass --no-text to use the image tower only")
            text_spec = {"kind": "siglip", "context_length": int(text.get("max_position_embeddings", 64)),
                         "padding": "max_length"}
    if entry.family == "dinov2":
        architecture = dict(config)
        token_dim = global_dim = int(config.get("hidden_size", 768))
    else:
        architecture = {"vision_config": dict(vision), "text_config": dict(text) if text_spec else None}
        token_dim = global_dim = int(vision.get("hidden_size", 768))
    return EncoderFiles(_spec(entry, architecture, spec.to_dict(), token_dim, global_dim, int(patch or 14),
                              text_spec, files_id(weights), folder), tokenizer)


# ------------------------------------------------------------------------------- open_clip
def _open_clip_weights(folder: Path) -> Path:
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise EncoderWeightsError(f"{folder} has open_clip_config.json but no weights: expected one of "
                              f"{', '.join(OPEN_CLIP_WEIGHTS)}; it holds {_listing(folder)}")


def bert_config_from_weights(state: dict[str, Any], prefix: str = "text.transformer.") -> dict[str, Any]:
    """A BERT config dict read from a BERT's tensors (``prefix`` + ``embeddings...``): sizes
    from the shapes, BERT's conventions for the rest (64-wide heads, eps 1e-12, GELU, pad 0)."""
    def shape(key: str) -> tuple[int, ...]:
        if prefix + key not in state:
            raise EncoderWeightsError(f"the text tower is not a BERT (no {prefix + key}): only BERT text towers of "
                                      "open_clip folders are read")
        return tuple(state[prefix + key].shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(k[len(prefix):].split(".")[2]) for k in state if k.startswith(prefix + "encoder.layer.")}
    return {"model_type": "bert", "vocab_size": vocab, "hidden_size": hidden,
            "max_position_embeddings": shape("embeddings.position_embeddings.weight")[0],
            "type_vocab_size": shape("embeddings.token_type_embeddings.weight")[0],
            "num_hidden_layers": len(layers), "num_attention_heads": max(1, hidden // 64),
            "intermediate_size": shape("encoder.layer.0.intermediate.dense.weight")[0],
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0}


def _resolve_open_clip(entry: EncoderEntry, path: Path, with_text: bool) -> EncoderFiles:
    from chextriev.model.encoders.inputs import from_open_clip

    folder = _folder_holding(entry, path, "open_clip_config.json")
    full = _read_json(folder / "open_clip_config.json")
    model_cfg = full.get("model_cfg")
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise EncoderWeightsError(f"{folder}/open_clip_config.json has no model_cfg with embed_dim and vision_cfg")
    vision = model_cfg["vision_cfg"]
    if "timm_model_name" in vision:
        if not str(vision["timm_model_name"]).startswith(("vit_", "test_vit")):
            raise EncoderWeightsError(f"{folder}: image tower {vision['timm_model_name']!r} is not a timm ViT; "
                                      f"--backbone {entry.name} reads ViT image towers only")
        patch = _timm_patch(vision["timm_model_name"])
    elif isinstance(vision.get("layers"), int):
        patch = int(vision.get("patch_size", 16))
    else:
        raise EncoderWeightsError(f"{folder}: a ResNet image tower; --backbone {entry.name} reads ViT towers only")
    if entry.patch_size is not None and patch != entry.patch_size:
        raise EncoderWeightsError(f"{folder}/open_clip_config.json has an image tower of patch size {patch}; "
                                  f"{entry.name} ({entry.title}) has patch size {entry.patch_size}")
    weights = _open_clip_weights(folder)
    state = read_tensors(weights)
    architecture = {k: v for k, v in model_cfg.items() if k != "text_cfg"}
    text_spec = None
    tokenizer: dict[str, bytes] = {}
    text_cfg = model_cfg.get("text_cfg") or {}
    if with_text and text_cfg:
        architecture["text_cfg"] = dict(text_cfg)
        if "hf_model_name" in text_cfg:
            architecture["hf_config"] = bert_config_from_weights(state)
            tokenizer = _tokenizer_files(folder)
            if not ({"vocab.txt", "tokenizer.json"} & set(tokenizer)):
                raise EncoderWeightsError(
                    f"{folder} has no tokenizer files for its text tower (vocab.txt or tokenizer.json, with "
                    f"tokenizer_config.json; open_clip reads them from this folder); it holds {_listing(folder)}. "
                    "Pass --no-text to use the image tower only")
            text_spec = {"kind": "hf", "context_length": int(text_cfg.get("context_length", 77))}
        else:
            text_spec = {"kind": "openai", "context_length": int(text_cfg.get("context_length", 77))}
    visual_keys = [k for k in state if k.startswith("visual.")]
    if not visual_keys:
        raise EncoderWeightsError(f"{weights} holds no image tower (no visual.* tensors)")
    image_size = vision.get("image_size", 224)
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    try:
        spec = from_open_clip(full.get("preprocess_cfg", {}), image_size, entry.input,
                              source=str(folder / "open_clip_config.json"))
    except ValueError as error:
        raise EncoderWeightsError(f"{folder}/open_clip_config.json: {error}") from error
    token_dim = _open_clip_token_dim(state)
    return EncoderFiles(_spec(entry, architecture, spec.to_dict(), token_dim, int(model_cfg["embed_dim"]), patch,
                              text_spec, files_id([weights]), folder, weights_file=weights.name), tokenizer)


def _timm_patch(name: str) -> int:
    import timm

    with _meta():
        model = timm.create_model(name, pretrained=False)
    return int(model.patch_embed.patch_size[0])


def _meta():
    import torch

    return torch.device("meta")


def _open_clip_token_dim(state: dict[str, Any]) -> int:
    for key in ("visual.trunk.patch_embed.proj.weight", "visual.conv1.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise EncoderWeightsError("cannot find the image tower's patch embedding (visual.trunk.patch_embed.proj.weight "
                              "or visual.conv1.weight)")


# ------------------------------------------------------------------------------- OpenAI CLIP
_OPENAI_REQUIRED = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
                    "visual.ln_post.weight")


def openai_model_cfg(state: dict[str, Any]) -> dict[str, Any]:
    """open_clip's ``model_cfg`` of an OpenAI-CLIP ViT state dict (the shapes, as OpenAI's and
    open_clip's loaders read them; attention heads 64 wide, QuickGELU)."""
    width = int(state["visual.conv1.weight"].shape[0])
    patch = int(state["visual.conv1.weight"].shape[-1])
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    cfg = {"embed_dim": int(state["visual.proj"].shape[1]), "quick_gelu": True,
           "vision_cfg": {"image_size": patch * grid, "layers": layers, "width": width, "patch_size": patch,
                          "head_width": 64}}
    if "token_embedding.weight" in state and "text_projection" in state:
        text_width = int(state["ln_final.weight"].shape[0])
        cfg["text_cfg"] = {"context_length": int(state["positional_embedding"].shape[0]),
                           "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": text_width,
                           "heads": max(1, text_width // 64),
                           "layers": len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})}
    return cfg


def _resolve_openai(entry: EncoderEntry, path: Path, with_text: bool) -> EncoderFiles:
    from chextriev.model.encoders.inputs import InputSpec

    if path.is_dir():
        raise EncoderWeightsError(f"--backbone {entry.name} expects {expected_files(entry.name)}; {path} is a folder "
                                  f"({_folder_kind(path)})")
    state = read_tensors(path)
    if any(k.startswith("visual.layer1.") for k in state):
        raise EncoderWeightsError(f"{path} is a ResNet CLIP; --backbone {entry.name} reads ViT image towers only")
    missing = [k for k in _OPENAI_REQUIRED if k not in state]
    if missing:
        sample = ", ".join(list(state)[:4])
        raise EncoderWeightsError(f"{path} is not an OpenAI-CLIP ViT state dict: missing {missing} (its keys begin "
                                  f"{sample}); --backbone {entry.name} expects {expected_files(entry.name)}")
    cfg = openai_model_cfg(state)
    patch = cfg["vision_cfg"]["patch_size"]
    if entry.patch_size is not None and patch != entry.patch_size:
        raise EncoderWeightsError(f"{path} is a CLIP ViT with patch size {patch}; {entry.name} ({entry.title}) has "
                                  f"patch size {entry.patch_size}")
    text_spec = None
    if with_text and "text_cfg" in cfg:
        text_spec = {"kind": "openai", "context_length": cfg["text_cfg"]["context_length"]}
    else:
        cfg.pop("text_cfg", None)
    spec = InputSpec.from_dict({**entry.input, "source": f"{entry.name} model card"}).with_side(
        cfg["vision_cfg"]["image_size"])
    return EncoderFiles(_spec(entry, cfg, spec.to_dict(), cfg["vision_cfg"]["width"], cfg["embed_dim"], patch,
                              text_spec, files_id([path]), path), {})


# ------------------------------------------------------------------------------- entry points
def _spec(entry: EncoderEntry, architecture: dict[str, Any], input_spec: dict[str, Any], token_dim: int,
          global_dim: int, patch: int, text: dict[str, Any] | None, weights_id: str, source: Path | None,
          weights_file: str | None = None) -> dict[str, Any]:
    return encoder_spec(entry, architecture, input_spec, token_dim, global_dim, patch, text, weights_id,
                        None if source is None else str(source), weights_file)


def resolve_encoder(name: str, weights: str | Path | None = None, *, seed: int = 0,
                    with_text: bool = True) -> EncoderFiles:
    """Check encoder ``name``'s files (``weights``: a folder or a file in its library's format;
    ``None``: its default architecture, random) and describe it. ``with_text``: read the text
    tower and its tokenizer too when the release has one. Nothing is downloaded; the weights
    are read for a checksum (and, for open_clip and OpenAI files, their shapes), not built."""
    entry = _entry(name)
    if weights is None:
        if entry.architecture is None:
            raise EncoderWeightsError(f"--backbone {name} ({entry.title}) has no default architecture: pass "
                                      f"--backbone-weights ({expected_files(name)})")
        return EncoderFiles(default_spec(name, seed))
    path = _weights_path(name, weights)
    if entry.layout == "transformers":
        return _resolve_transformers(entry, path, with_text and entry.text)
    if entry.layout == "open_clip":
        return _resolve_open_clip(entry, path, with_text and entry.text)
    return _resolve_openai(entry, path, with_text and entry.text)


# ------------------------------------------------------------------------------- building
def load_trunk(spec: dict[str, Any], weights: str | Path | None, *, seed: int = 0, quiet: bool = False):
    """The image trunk of ``spec``: with the weights of ``weights`` (the files
    :func:`resolve_encoder` described), else randomly initialised from ``seed`` (or left
    uninitialised when ``quiet``: a checkpoint's weights follow)."""
    import torch

    from chextriev.model.encoders.families import build_trunk

    family, architecture = spec["family"], spec["architecture"]
    if weights is None:
        if quiet:
            return build_trunk(family, architecture, init=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_trunk(family, architecture)
    path = hub_snapshot(Path(weights).expanduser())
    if spec["layout"] == "transformers":
        return _transformers_trunk(spec, path)
    state = read_tensors(path / spec["weights_file"] if path.is_dir() else path)
    trunk = build_trunk(family, architecture, init=False)
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    _load_strict(trunk.visual, visual, path, "image tower")
    return trunk


def load_text(spec: dict[str, Any], weights: str | Path | None, *, quiet: bool = False):
    """The text tower of ``spec`` with the weights of ``weights`` (``None``: uninitialised, a
    checkpoint's weights follow)."""
    from chextriev.model.encoders.families import build_text_tower

    family, architecture = spec["family"], spec["architecture"]
    if weights is None:
        return build_text_tower(family, architecture, init=not quiet)
    path = hub_snapshot(Path(weights).expanduser())
    if spec["layout"] == "transformers":
        from transformers import SiglipTextModel

        from chextriev.model.encoders.families import SiglipText

        model = _from_pretrained(SiglipTextModel, path)
        return SiglipText(architecture["text_config"], model=model)
    state = read_tensors(path / spec["weights_file"] if path.is_dir() else path)
    if spec["layout"] == "openai_state_dict":
        state = {"text." + k: v for k, v in state.items()
                 if k.startswith(("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                                  "text_projection"))}
    tower = build_text_tower(family, architecture, init=False)
    text = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    text = {k: v for k, v in text.items() if not k.endswith("embeddings.position_ids")
            and not k.startswith("transformer.pooler.")}
    _load_strict(tower.text, text, path, "text tower")
    return tower


def _load_strict(module, state: dict[str, Any], path: Path, what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:5]} ({len(missing)})" if missing else "",
                 f"unexpected {unexpected[:5]} ({len(unexpected)})" if unexpected else "",
                 f"wrong shapes {shapes[:5]}" if shapes else ""]
        raise EncoderWeightsError(f"the {what} weights in {path} do not fit the architecture its config describes: "
                                  + "; ".join(p for p in parts if p))
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _from_pretrained(cls, folder: Path):
    """``cls.from_pretrained`` on a local folder, float32, refusing any missing or misshapen weight
    (transformers would initialise it randomly with a warning)."""
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the other tower's keys as "unexpected"
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                          dtype=torch.float32)
    except EncoderWeightsError:
        raise
    except Exception as error:  # transformers raises OSError/ValueError/SafetensorError for damaged folders
        if "mismatched" in str(error):
            raise EncoderWeightsError(f"the weights in {folder} do not fit its config.json ({cls.__name__}): tensor "
                                      "shapes differ from the ones config.json describes (a config of another "
                                      "checkpoint?)") from error
        raise EncoderWeightsError(f"cannot load {cls.__name__} from {folder}: {str(error).splitlines()[0][:300]}") \
            from error
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise EncoderWeightsError(f"the weights in {folder} do not fit its config.json ({cls.__name__}): missing "
                                  f"{missing[:5]} ({len(missing)}), wrong shapes {mismatched[:5]}")
    return model.eval()


def _transformers_trunk(spec: dict[str, Any], folder: Path):
    from chextriev.model.encoders.families import Dinov2Trunk, SiglipTrunk

    if spec["family"] == "dinov2":
        from transformers import Dinov2Model

        return Dinov2Trunk(spec["architecture"], model=_from_pretrained(Dinov2Model, folder))
    from transformers import SiglipVisionModel

    return SiglipTrunk(spec["architecture"]["vision_config"], model=_from_pretrained(SiglipVisionModel, folder))


def encoder_weight_paths(spec: dict[str, Any], weights: str | Path) -> list[Path]:
    """The weight files of an encoder's files (for identity checks)."""
    path = hub_snapshot(Path(weights).expanduser())
    if spec["layout"] == "transformers":
        return _transformers_weights(path)
    if spec["layout"] == "open_clip":
        return [path / spec["weights_file"]]
    return [path]


__all__ = ["EncoderFiles", "EncoderWeightsError", "default_spec", "expected_files", "files_id", "hub_snapshot",
           "load_text", "load_trunk", "resolve_encoder"]
