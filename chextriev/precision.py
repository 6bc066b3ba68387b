"""Numeric precision of inference: ``auto``, ``fp32`` or ``bf16``, and the one place that applies it.

>>> precision = resolve_precision("auto", "cpu")   # "bf16" on AMX / AVX-512 bf16 CPUs  # doctest: +SKIP
>>> with autocast(precision, "cpu"):                                                    # doctest: +SKIP
...     output = model(images, boxes)

* ``fp32``: everything in float32 (the reference).
* ``bf16``: the model forward runs under ``torch.autocast(dtype=torch.bfloat16)``: matrix
  products and convolutions in bfloat16 with float32 accumulation, the rest by autocast's own
  policy; results (embeddings, probabilities) come back as float32, and the final L2
  normalisation runs in float32 (``RetrievalModel.retrieval_embedding``).
  :func:`prepare_model` stores the weights of ``Conv*``/``Linear`` layers in bfloat16 once
  (autocast would otherwise cast every weight again on every call); every other parameter and
  buffer (batch and layer norms, positional tables) stays float32.
* ``auto``: ``bf16`` where the hardware computes it natively, ``fp32`` elsewhere: on a CPU with
  AMX (``amx_bf16``: Intel Xeon since Sapphire Rapids) or AVX-512 bf16 (``avx512_bf16``: also
  AMD EPYC since Zen 4), and on a CUDA GPU that supports bf16 (Ampere and later). When ``auto``
  picks bf16 for a model, the first batch that model embeds is computed both ways and bf16 is
  kept only if every embedding has cosine >= :data:`BF16_MIN_COSINE` to its fp32 one (else the
  model stays fp32, logged once): a model whose features are too sensitive to bf16 rounding
  is never silently degraded. The default architecture with a random-init backbone is one: its
  feature standardisation floors each channel's scale at 1e-3, and the backbone's sparse
  channels (std ~1e-4 on the fit images, values up to 0.06 on new ones, from near-cancelling
  sums that bf16 rounds by ~2 %) then weigh tens of standard deviations, so its bf16 embeddings
  agree with fp32 at cosine 0.978-0.997 only (a floor relative to the median channel spread
  would fix that but costs retrieval quality: ``chextriev.model.region_features.feature_scale``).
  An explicit ``bf16`` is not checked.

CPU features are read from ``/proc/cpuinfo`` (Linux) and, where that file does not exist, from
torch's own CPU probes. ``CHEXTRIEV_PRECISION`` (one of :data:`PRECISIONS`) overrides the
default ``auto`` of every command that takes ``--precision``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

from chextriev.errors import ChextrievError, UnknownNameError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED = ("fp32", "bf16")
# /proc/cpuinfo flags that mean native bf16 arithmetic (either is enough for ``auto``).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
ENV_VAR = "CHEXTRIEV_PRECISION"
# The accuracy ``auto`` keeps: every bf16 embedding at least this cosine to its fp32 embedding.
BF16_MIN_COSINE = 0.999


class PrecisionError(ChextrievError):
    """A precision the device cannot run."""


def default_precision() -> str:
    """``$CHEXTRIEV_PRECISION`` when set, else ``"auto"``: the default of the ``--precision`` flags.

    Not checked here (argument parsing must not fail on it): :func:`resolve_precision` rejects
    a wrong value when the model is loaded, naming the variable.
    """
    return os.environ.get(ENV_VAR, "").strip().lower() or "auto"


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` text (empty when none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / arm64
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo_flags() -> frozenset[str] | None:
    path = Path("/proc/cpuinfo")
    try:
        return parse_cpuinfo_flags(path.read_text(errors="replace"))
    except OSError:
        return None


def cpu_flags() -> frozenset[str] | None:
    """This CPU's flags from ``/proc/cpuinfo``, or None where that file cannot be read."""
    return _proc_cpuinfo_flags()


def cpu_bf16_features(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The native bf16 features of this CPU, a subset of :data:`BF16_CPU_FLAGS` (empty = none).

    ``flags``: CPU flags to judge (default: this machine's, from ``/proc/cpuinfo``; where that
    file is missing, torch's probes ``torch.cpu._is_amx_tile_supported`` /
    ``_is_avx512_bf16_supported`` answer).
    """
    if flags is None:
        flags = _proc_cpuinfo_flags()
    if flags is not None:
        return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)
    import torch

    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    found = []
    for flag, probe in probes:
        function = getattr(torch.cpu, probe, None)
        try:
            if function is not None and function():
                found.append(flag)
        except RuntimeError:  # a probe that cannot run on this platform says "no"
            pass
    return tuple(found)


def device_type(device) -> str:
    """``"cuda"`` for ``cuda``/``cuda:N``/a CUDA ``torch.device``, else its type (``"cpu"``...)."""
    return str(getattr(device, "type", device)).split(":", 1)[0]


def cuda_bf16_supported(device=None) -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    index = getattr(device, "index", None)
    if index is None and ":" in str(device):
        index = int(str(device).split(":", 1)[1])
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 8  # Ampere and later compute bf16 natively


def native_bf16(device) -> bool:
    """True when ``device`` computes bf16 natively (see the module docstring)."""
    kind = device_type(device)
    if kind == "cpu":
        return bool(cpu_bf16_features())
    if kind == "cuda":
        return cuda_bf16_supported(device)
    return False


def resolve_precision(precision: str, device="cpu") -> str:
    """``auto``/``fp32``/``bf16`` for ``device`` -> ``"fp32"`` or ``"bf16"``.

    ``bf16`` on hardware without native bf16 still runs (emulated, usually slower than fp32): it
    is honoured with a warning. ``bf16`` on a device type autocast cannot run in bf16 raises
    :class:`PrecisionError`.
    """
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        from_env = name == os.environ.get(ENV_VAR, "").strip().lower()
        raise UnknownNameError(f"precision{f' (from ${ENV_VAR})' if from_env else ''}", str(precision),
                               PRECISIONS)
    kind = device_type(device)
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16":
        if kind not in ("cpu", "cuda"):
            raise PrecisionError(f"bf16 needs a CPU or CUDA device, not {device!s}: use --precision fp32")
        if not native_bf16(device):
            log.warning("bf16 requested on %s, which has no native bf16 units (%s): it runs emulated, "
                        "usually slower than fp32 (use --precision auto or fp32)", device,
                        "needs amx_bf16 or avx512_bf16" if kind == "cpu" else "needs compute capability 8.0+")
    return name


def describe(precision: str, device="cpu", resolved: str | None = None) -> str:
    """One line for logs: the resolved precision and why (e.g. ``bf16 (CPU avx512_bf16; asked:
    auto)``). ``resolved``: what :func:`resolve_precision` gave, when already known."""
    resolved = resolved or resolve_precision(precision, device)
    if device_type(device) == "cpu":
        features = cpu_bf16_features()
        why = f"CPU {', '.join(features)}" if features else "CPU without native bf16"
    else:
        why = str(device)
    return f"{resolved} ({why}; asked: {precision})"


def autocast(precision: str, device="cpu"):
    """The context the model forward runs in: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``.

    ``precision`` must be resolved already (``"fp32"`` or ``"bf16"``; see :func:`resolve_precision`).
    """
    if precision not in RESOLVED:
        raise UnknownNameError("resolved precision", str(precision), RESOLVED)
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type(device), dtype=torch.bfloat16)


def prepare_model(model, precision: str):
    """Store the ``Conv1d/2d/3d`` and ``Linear`` weights of ``model`` in bf16 for ``"bf16"``, and
    the input projections of ``nn.MultiheadAttention`` (open_clip's and OpenAI CLIP's attention,
    SigLIP's pooling head), which are plain parameters, not ``Linear`` layers.

    Autocast casts those weights to bf16 on every call anyway (it caches nothing in inference
    mode); storing them once saves that copy (about 5 % of a ResNet50 pass at 512 px, 30 % of the
    graph transformer) and half their memory. For ``nn.MultiheadAttention`` the cast of its
    float32 in-projection took most of a CheXzero (CLIP ViT-B/32) pass: bf16 was 3x slower than
    fp32 on this CPU, and 3.5x faster with the projection stored in bf16 (BENCHMARKS.md
    "Foundation encoders"). Norm layers, positional tables and buffers stay float32. A
    bf16-prepared model must run under :func:`autocast`. Returns ``model``.
    """
    if precision not in RESOLVED:
        raise UnknownNameError("resolved precision", str(precision), RESOLVED)
    if precision == "fp32":
        return model
    import torch
    from torch import nn

    # Normal tensors even when called under inference mode (``auto`` settles inside
    # embed_images): Grad-CAM differentiates through these weights later.
    with torch.inference_mode(False), torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                module.to(torch.bfloat16)
            elif isinstance(module, nn.MultiheadAttention):
                for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    parameter = getattr(module, name, None)
                    if parameter is not None:
                        parameter.data = parameter.data.to(torch.bfloat16)
    return model


def weights_precision(model) -> str:
    """``"bf16"`` when :func:`prepare_model` stored ``model``'s Conv/Linear weights in bf16, else
    ``"fp32"`` (what a model handed over without its :class:`LoadedModel` must run in)."""
    import torch
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return "bf16" if module.weight.dtype == torch.bfloat16 else "fp32"
    return "fp32"


def min_cosine(reference, candidate) -> float:
    """Smallest row-wise cosine between two ``(N, D)`` float arrays (1.0 for ``N == 0``)."""
    import numpy as np

    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape[0] == 0:
        return 1.0
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float((np.sum(a * b, axis=1) / norms).min())
