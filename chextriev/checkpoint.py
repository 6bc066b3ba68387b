"""Load a model from its checkpoint alone (``chextriev train`` writes them).

A checkpoint is a Lightning ``.ckpt`` whose ``hyper_parameters`` hold (see
``chextriev.training.module.RetrievalModule``):

* ``model_config``: :meth:`ModelConfig.to_dict` (the whole config, adjacency included);
* ``variant``: the variant name; ``class_names``; ``image_size``;
* ``atlas``: :meth:`chextriev.anatomy.atlas.Atlas.to_dict` fitted on the training records;

and whose ``state_dict`` holds the model's weights under the ``model.`` prefix (frozen backbone
included, so no weights file is needed at load time).

The training run's split: ``data[SPLIT_KEY]`` (:mod:`chextriev.splits`), kept as
:attr:`LoadedModel.data_split` (``None`` for a checkpoint written before it was saved); ``chextriev
evaluate`` evaluates its test patients.

Finding thresholds: ``data[THRESHOLDS_KEY]`` (``{"rule", "class_names", "values", "f1",
"n_images", "epoch"}``, see :mod:`chextriev.training.thresholds`) holds the per-class
thresholds chosen on validation (max F1). :attr:`LoadedModel.thresholds` is ``(C,)`` with NaN
for a class without one, or ``None`` for a checkpoint written before thresholds were saved
(it still loads; the log says so); :meth:`LoadedModel.finding_thresholds` fills the gaps with
:data:`DEFAULT_THRESHOLD`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.provider import BoxProvider
from chextriev.errors import ChextrievError
from chextriev.files import atomic_path, sha256_file
from chextriev.model.backbone import weights_restored_later
from chextriev.model.build import build_from_config
from chextriev.model.config import ENCODER_FILES_KEY, MODEL_FORMAT, STATE_PREFIX, ModelConfig
from chextriev.model.retrieval_model import RetrievalModel
from chextriev.precision import describe, prepare_model, resolve_precision
from chextriev.splits import SPLIT_KEY

log = logging.getLogger(__name__)

#: Top-level checkpoint key of the finding thresholds chosen on validation.
THRESHOLDS_KEY = "finding_thresholds"
#: Probability from which a finding counts as predicted when no threshold was chosen for it.
DEFAULT_THRESHOLD = 0.5


class CheckpointError(ChextrievError):
    """A checkpoint that is missing, unreadable or not written by ``chextriev train``."""


@dataclass
class LoadedModel:
    """A model ready for :func:`chextriev.embedding.embed_images`.

    ``model`` is in eval mode on ``device``; ``checkpoint_id`` is the first 16 hex digits of the
    file's sha256; ``embedding_dim`` is ``D`` of the embeddings; ``has_regions`` says whether
    region probabilities/embeddings exist; ``binary`` whether embeddings are sign codes (ATH);
    ``precision`` the resolved precision the model runs in (``"fp32"`` or ``"bf16"``, see
    :mod:`chextriev.precision`; a bf16 model's Conv/Linear weights are stored in bf16);
    ``verify_bf16`` is True while an ``auto`` bf16 choice waits for its check on the first
    embedded batch (:meth:`settle_bf16`; weights stay float32 until then); ``compile`` whether
    the frozen trunk runs compiled at inference (:mod:`chextriev.compiled`: loaded from the
    compiled cache or compiled at load; with a pending ``auto`` check the bf16 trunk is compiled
    at load and runs once the check has kept bf16).
    """

    model: RetrievalModel
    config: ModelConfig
    class_names: tuple[str, ...]
    image_size: int
    checkpoint_id: str
    embedding_dim: int
    has_regions: bool
    box_provider: BoxProvider
    device: torch.device
    variant: str = ""
    binary: bool = False
    path: Path | None = None
    precision: str = "fp32"
    verify_bf16: bool = False
    thresholds: np.ndarray | None = None  # (C,) chosen on validation (NaN = none); None: not saved
    threshold_rule: str | None = None
    compile: bool = False
    compile_batch: int = 1  # the batch size the trunk is compiled for (1: exactly one image)
    data_split: dict[str, Any] | None = None  # the training run's split (chextriev.splits); None: not saved
    _pending_trunk: Any = field(default=None, repr=False)  # compiled bf16 trunk awaiting the `auto` check
    encoder_files: dict[str, bytes] | None = None  # a text tower's tokenizer files (ENCODER_FILES_KEY)
    _text_encoder: Any = field(default=None, repr=False, compare=False)

    @property
    def has_findings(self) -> bool:
        """False for a model without a finding head (a label-free ``encoder`` model from
        ``chextriev model init``): its probabilities are ``(N, 0)``, it predicts no findings."""
        return bool(self.class_names) and self.config.kind != "encoder"

    @property
    def findings_note(self) -> str | None:
        """Why there are no predicted findings (None when the model predicts them)."""
        if self.has_findings:
            return None
        return (f"this model predicts no findings: it is the {self.config.backbone} encoder's own embedding, made "
                "without labels (chextriev model init), so it has no finding head; results are ranked by image "
                f"similarity only. Train a variant on the encoder's tokens (chextriev train --variant v6 --backbone "
                f"{self.config.backbone} ...) on labelled images for predicted findings")

    @property
    def text_encoder(self):
        """``None``, or an object whose ``embed(texts) -> (n, D)`` float32 L2-normalised vectors
        lie in the space of this model's index embedding (a CLIP-family encoder model whose
        embedding is the encoder's joint image-text embedding): their inner product with the
        stored embeddings is the encoder's image-text similarity."""
        tower = getattr(self.model, "text_tower", None)
        if tower is None:
            return None
        if self._text_encoder is None:
            from chextriev.model.encoders.text import TextEncoder

            self._text_encoder = TextEncoder(tower, self.encoder_files or {}, device=self.device,
                                             precision=self.precision)
        return self._text_encoder

    @property
    def regions_in_text_space(self) -> bool:
        """The region embeddings lie in the text encoder's space too (regions by text)."""
        return self.text_encoder is not None

    def finding_thresholds(self) -> np.ndarray:
        """``(C,)`` thresholds for predicted findings: the checkpoint's, else (per class, or all
        for a checkpoint without them) :data:`DEFAULT_THRESHOLD`."""
        if self.thresholds is None:
            return np.full(len(self.class_names), DEFAULT_THRESHOLD, np.float32)
        return np.where(np.isnan(self.thresholds), DEFAULT_THRESHOLD, self.thresholds).astype(np.float32)

    def settle_bf16(self, cosine: float, images: int) -> str:
        """End the ``auto`` check: keep bf16 when ``cosine`` (the smallest bf16-to-fp32 cosine of
        ``images`` embeddings) reaches :data:`chextriev.precision.BF16_MIN_COSINE`, else fall back
        to fp32 (the detector too). Returns the precision kept."""
        from chextriev.precision import BF16_MIN_COSINE

        self.verify_bf16 = False
        self._text_encoder = None  # made again in the precision kept
        pending, self._pending_trunk = self._pending_trunk, None
        if cosine >= BF16_MIN_COSINE:
            prepare_model(self.model, "bf16")
            log.info("precision auto: bf16 kept (smallest cosine to fp32 %.6f over %d images)", cosine, images)
            self._install_compiled(pending)
            return self.precision
        self.precision = "fp32"
        detector = getattr(self.box_provider, "detector", None)
        if detector is not None and hasattr(detector, "precision"):
            detector.precision = "fp32"
        log.warning("precision auto: this model's bf16 embeddings differ from fp32 (smallest cosine %.6f < "
                    "%.3f over %d images): running in fp32 (--precision bf16 forces bf16)", cosine,
                    BF16_MIN_COSINE, images)
        self.start_compiled()
        return self.precision

    def start_compiled(self) -> float | None:
        """With ``compile``: load the compiled trunk from the compiled cache, or compile it (see
        :mod:`chextriev.compiled`), for batches of ``compile_batch``. While ``auto`` waits for
        its check on the first batch, the bf16 trunk is compiled now and installed if the check
        keeps bf16 (the likely outcome; a fp32 fallback compiles again then). Returns the seconds
        it took, or None when the trunk stays eager."""
        if not self.compile:
            return None
        from chextriev.compiled import compile_trunk, trunk_module

        module = trunk_module(self.model)
        if module is None:
            return None
        precision = "bf16" if self.verify_bf16 else self.precision
        trunk = compile_trunk(module, precision=precision, batch=self.compile_batch, device=self.device)
        if self.verify_bf16:
            self._pending_trunk = trunk
        else:
            self._install_compiled(trunk)
        return trunk.seconds if trunk is not None else None

    def _install_compiled(self, trunk) -> None:
        if trunk is not None:
            self.model.feature_module().compiled_trunk = trunk

    @property
    def max_input_side(self) -> int | None:
        """What :func:`chextriev.io.pixels.model_pixels` prepares images for: ``S``, the side of
        the model's square resize (a pre-shrink to ``S x S`` with the same filter hands the model
        the same input), or ``None``: the model needs the original (``crop`` mode, a centre crop)."""
        return self.model.max_input_side

    @classmethod
    def from_model(cls, model: RetrievalModel, *, atlas: Atlas | None = None, detector=None,
                   device: str | torch.device = "cpu", variant: str = "",
                   precision: str = "fp32", encoder_files: dict[str, bytes] | None = None) -> LoadedModel:
        """Wrap an in-memory model (e.g. an untrained baseline, a test model) without a file.

        ``checkpoint_id`` is ``"in-memory"``; the atlas defaults to the anatomical template.
        ``precision`` other than fp32 converts ``model``'s Conv/Linear weights in place.
        """
        device = torch.device(device)
        precision = resolve_precision(precision, device)
        prepare_model(model.to(device).eval(), precision)
        config = model.config
        return cls(model=model, config=config, class_names=tuple(config.class_names),
                   image_size=config.image_size, checkpoint_id="in-memory", embedding_dim=model.embedding_dim,
                   has_regions=config.has_regions, box_provider=BoxProvider(atlas or Atlas.default(), detector),
                   device=device, variant=variant, binary=bool(config.binary), precision=precision,
                   encoder_files=encoder_files)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (tensors on CPU). Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train one with `chextriev train`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def model_from_checkpoint_dict(data: dict[str, Any]) -> tuple[RetrievalModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint dict: ``(model (train mode, CPU), hyper_parameters)``."""
    hparams = data.get("hyper_parameters") or {}
    if "model_config" not in hparams:
        raise CheckpointError("checkpoint has no 'model_config' hyper-parameter: not written by `chextriev train`")
    written = int(hparams.get("model_format", 1))  # checkpoints before the field: format 1
    if written != MODEL_FORMAT:
        raise CheckpointError(f"checkpoint weights are in model format {written}, this chextriev reads format "
                              f"{MODEL_FORMAT} (one shared head, published attention): retrain it with `chextriev train`")
    config = replace(ModelConfig.from_dict(dict(hparams["model_config"])), backbone_weights=None)
    with weights_restored_later():
        model = build_from_config(config)
    state = {k[len(STATE_PREFIX):]: v for k, v in data.get("state_dict", {}).items() if k.startswith(STATE_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint weights do not fit the {config.kind} model: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]} (written by an older "
                              "chextriev? retrain it with `chextriev train`)")
    return model, hparams


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    detector_path: str | Path | None = None, precision: str = "fp32",
                    compile: bool = False, compile_batch: int = 1) -> LoadedModel:
    """Load ``path`` (a ``chextriev train`` checkpoint) for inference.

    Args:
        path: the ``.ckpt`` file.
        device: where the model runs.
        detector_path: an optional anatomy detector (``chextriev train-detector``) used before
            the checkpoint's atlas for images without boxes; it runs in the same precision.
        precision: ``"fp32"`` (default: the reference numerics), ``"bf16"``, or ``"auto"``
            (bf16 where the device computes it natively; the commands' default). See
            :mod:`chextriev.precision`.
        compile: run the frozen trunk compiled (:mod:`chextriev.compiled`), loaded from the
            compiled cache or compiled here for batches of ``compile_batch`` (default off here;
            the commands' ``--compile`` defaults to on).
    """
    path = Path(path)
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    data = read_checkpoint(path)
    model, hparams = model_from_checkpoint_dict(data)
    verify = resolved == "bf16" and str(precision).strip().lower() == "auto"
    prepare_model(model.to(device).eval(), "fp32" if verify else resolved)
    log.info("model %s on %s, precision %s%s", path.name, device, describe(precision, device, resolved),
             ", checked against fp32 on the first batch it embeds" if verify else "")
    config = model.config
    atlas = Atlas.from_dict(hparams["atlas"]) if hparams.get("atlas") else Atlas.default()
    detector = None
    if detector_path is not None:
        from chextriev.anatomy.detector import AnatomyDetector

        detector = AnatomyDetector.load(detector_path, device=device, precision=resolved)
    class_names = tuple(hparams.get("class_names", config.class_names))
    thresholds, rule = checkpoint_thresholds(data, class_names, path) if class_names else (None, None)
    loaded = LoadedModel(
        model=model,
        config=config,
        class_names=class_names,
        image_size=int(hparams.get("image_size", config.image_size)),
        checkpoint_id=sha256_file(path)[:16],
        embedding_dim=model.embedding_dim,
        has_regions=config.has_regions,
        box_provider=BoxProvider(atlas, detector),
        device=device,
        variant=str(hparams.get("variant", "")),
        binary=bool(config.binary),
        path=path,
        precision=resolved,
        verify_bf16=verify,
        thresholds=thresholds,
        threshold_rule=rule,
        compile=bool(compile),
        compile_batch=max(1, int(compile_batch)),
        data_split=data.get(SPLIT_KEY),
        encoder_files=data.get(ENCODER_FILES_KEY),
    )
    loaded.start_compiled()
    return loaded


def checkpoint_thresholds(data: dict[str, Any], class_names: tuple[str, ...],
                          path: Path | None = None) -> tuple[np.ndarray | None, str | None]:
    """``(thresholds (C,) NaN = none, rule)`` saved in a checkpoint dict, or ``(None, None)`` for
    a checkpoint written before thresholds were saved (logged: findings are then predicted at
    :data:`DEFAULT_THRESHOLD`). Raises :class:`CheckpointError` when they do not fit the classes."""
    entry = data.get(THRESHOLDS_KEY)
    name = path.name if path is not None else "checkpoint"
    if not entry:
        log.info("%s has no finding thresholds (written before they were saved): predicted findings use "
                 "probability >= %.1f; retrain to get thresholds chosen on validation", name, DEFAULT_THRESHOLD)
        return None, None
    values = [np.nan if v is None else float(v) for v in entry.get("values", [])]
    if list(entry.get("class_names", class_names)) != list(class_names) or len(values) != len(class_names):
        raise CheckpointError(f"{name}: its finding thresholds are for classes {entry.get('class_names')}, "
                              f"the model has {list(class_names)}")
    return np.asarray(values, dtype=np.float32), str(entry.get("rule", ""))


def _save_atomically(data: dict[str, Any], path: Path) -> Path:
    """``torch.save`` into a temporary file beside ``path``, fsynced, renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_path(path, lambda tmp: torch.save(data, tmp))


def save_model_checkpoint(path: str | Path, model: RetrievalModel, *, variant: str,
                          atlas: Atlas | None = None, **hyper_parameters: Any) -> Path:
    """Write ``model`` (its config and weights) as a checkpoint that :func:`load_checkpoint`
    reads like one of ``chextriev train``, without training: the untrained and random-weight
    models of the benchmarks and tests. ``hyper_parameters`` are saved beside the standard ones
    (e.g. ``feature_scale_rule``)."""
    config = model.config
    hparams = {"model_format": MODEL_FORMAT, "model_config": config.to_dict(), "variant": variant,
               "class_names": list(config.class_names), "image_size": config.image_size, **hyper_parameters}
    if atlas is not None:
        hparams["atlas"] = atlas.to_dict()
    state = {f"{STATE_PREFIX}{k}": v for k, v in model.state_dict().items()}
    return _save_atomically({"hyper_parameters": hparams, "state_dict": state}, Path(path))


def derive_checkpoint(source: str | Path, target: str | Path, *, variant: str, **config_changes: Any) -> Path:
    """Write ``target``: the checkpoint ``source`` (same weights, thresholds and atlas) with
    ``config_changes`` applied to its model config, saved as ``variant``. E.g. ``ath-binary``
    from an ``ath`` run (``binary=True``: the sign of the codes that ``ath`` trains, read as a
    hashing method reads them at search time). Raises :class:`CheckpointError` for a change that
    is no config field or a result that does not load."""
    data = read_checkpoint(source)
    hparams = dict(data.get("hyper_parameters") or {})
    if "model_config" not in hparams:
        raise CheckpointError(f"{source} has no 'model_config' hyper-parameter: not written by `chextriev train`")
    config = dict(hparams["model_config"])
    unknown = sorted(set(config_changes) - set(config))
    if unknown:
        raise CheckpointError(f"{', '.join(unknown)}: not a field of the model config of {source}")
    config.update(config_changes)
    hparams["model_config"], hparams["variant"] = config, variant
    model_from_checkpoint_dict({**data, "hyper_parameters": hparams})  # the derived file must load
    return _save_atomically({**data, "hyper_parameters": hparams}, Path(target))
