"""Compiled inference of the frozen backbone trunk (``--compile``): torch's own compiler.

>>> enable_compiled_trunk(loaded.model)     # doctest: +SKIP
>>> warm_up(loaded, batch_size=16)          # the one-off compilation, here and not in a request

The frozen trunk (ResNet50 at 512 px: ~90 % of an upload search) is handed to ``torch.compile``
(TorchInductor) with ``freezing``: its weights become constants, batch norms fold into the
convolutions, ReLUs and residual additions fuse into their producers, and oneDNN convolutions get
pre-packed weights. In bf16 that is 1.2-1.5x faster than eager on the CPU (BENCHMARKS.md
"Compiled trunk"); the features stay at cosine >= 0.9999 to the eager ones of the same
precision.

* Only inference uses it: with gradients enabled (Grad-CAM, training) the eager trunk runs.
* Compiling costs 10-30 s per input shape on 2 cores (cached on disk by torch between runs of
  the same code): :func:`warm_up` pays it when the model is loaded. A batch dimension above 1 is
  compiled dynamic, so the last, shorter batch of a run does not compile again.
* When compilation fails (no C++ compiler, an unsupported platform), the failure is logged once
  and the eager trunk runs: ``--compile`` never makes a command fail.
* The graph transformer and heads stay eager: compiled, they were no faster (BENCHMARKS.md).

``--compile on|off`` on ``index``, ``serve`` and ``evaluate`` (default ``off``;
``CHEXTRIEV_COMPILE=on`` changes the default of all three).
"""

from __future__ import annotations

import logging
import os
import time

from chextriev.vocab import NUM_REGIONS

log = logging.getLogger(__name__)

ENV_VAR = "CHEXTRIEV_COMPILE"
#: TorchInductor options: weights as constants (batch norm folded, weights pre-packed).
INDUCTOR_OPTIONS = {"freezing": True}


COMPILE_MODES = ("off", "on")
_SPELLINGS = {"on": "on", "1": "on", "true": "on", "yes": "on",
              "off": "off", "0": "off", "false": "off", "no": "off", "": "off"}


def parse_compile(value) -> str:
    """``on``/``off`` from a flag, setting or environment value (also 1/0, true/false,
    yes/no). Raises :class:`~chextriev.errors.UnknownNameError` for anything else."""
    from chextriev.errors import UnknownNameError

    text = "on" if value is True else "off" if value in (False, None) else str(value).strip().lower()
    if text not in _SPELLINGS:
        raise UnknownNameError("compile mode", str(value), COMPILE_MODES)
    return _SPELLINGS[text]


def default_compile() -> str:
    """``$CHEXTRIEV_COMPILE`` when set, else ``"off"``: the default of the ``--compile`` flags
    (argument parsing checks it with :func:`parse_compile`). Imports nothing heavy."""
    return os.environ.get(ENV_VAR, "").strip().lower() or "off"


class CompiledTrunk:
    """The compiled callable of one trunk, with the eager trunk as its fallback.

    Not an ``nn.Module`` on purpose: kept as a plain attribute of the feature module, it adds no
    state-dict keys and no parameters (the eager trunk's are the ones saved and trained).
    """

    def __init__(self, trunk):
        import torch

        self.trunk = trunk
        self.compiled = torch.compile(trunk, options=dict(INDUCTOR_OPTIONS))
        self.failed: str | None = None

    def __call__(self, inputs):
        import torch

        if self.failed is not None or torch.is_grad_enabled():
            return self.trunk(inputs)
        try:
            return self.compiled(inputs)
        except Exception as error:  # noqa: BLE001 - torch raises many kinds for a missing or failing compiler
            self.failed = describe_failure(error)
            log.warning("--compile: compiling the backbone trunk failed (%s); running it eagerly", self.failed)
            return self.trunk(inputs)


def describe_failure(error: BaseException) -> str:
    """One line for the log: the exception's type and the most specific line of its message
    (TorchInductor wraps the cause: "backend='inductor' raised:" then the real error)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.endswith("raised:") and not line.startswith("Set TORCH")]
    return f"{type(error).__name__}: {(useful or lines or [''])[0][:300]}"


def enable_compiled_trunk(model) -> bool:
    """Run ``model``'s frozen trunk compiled at inference. Returns False (logged) when the model
    has no frozen trunk to compile (ATH's own network, a trunk that trains)."""
    module = model.feature_module() if hasattr(model, "feature_module") else None
    if module is None or not hasattr(module, "trunk"):
        log.info("--compile: %s has no backbone trunk to compile; running eagerly", type(model).__name__)
        return False
    if getattr(module.config, "train_backbone", False):
        log.info("--compile: the backbone trains with the model; running it eagerly")
        return False
    module.compiled_trunk = CompiledTrunk(module.trunk)
    return True


def compiled_trunk(model) -> CompiledTrunk | None:
    """The :class:`CompiledTrunk` of ``model``, or None."""
    module = model.feature_module() if hasattr(model, "feature_module") else None
    return getattr(module, "compiled_trunk", None) if module is not None else None


def warm_up(loaded, batch_size: int = 1) -> float | None:
    """Compile ``loaded``'s trunk now for its input shape and precision (one call on zeros).

    The shape is what the trunk will take: ``batch_size`` images (times 18 crops in crop mode,
    whose crop count varies); above 1 the batch dimension is compiled dynamic (one graph for
    every batch of 2 or more). Returns the seconds it took, or None when nothing is compiled or when ``auto``
    precision still waits for its check on the first batch (then the first batch after the
    check compiles; :meth:`chextriev.checkpoint.LoadedModel.settle_bf16` calls this again).
    """
    import torch

    from chextriev.precision import autocast

    compiled = compiled_trunk(loaded.model)
    if compiled is None or compiled.failed is not None or getattr(loaded, "verify_bf16", False):
        return None
    module = loaded.model.feature_module()
    config = module.config
    crops = config.has_regions and config.feature_mode == "crop"
    side = config.crop_size if crops else config.image_size
    # crop mode: the trunk takes every present region's crop, up to 18 per image
    batch = max(1, int(batch_size)) * (NUM_REGIONS if crops else 1)
    started = time.perf_counter()
    log.info("--compile: compiling the %s trunk for %d x %d px, batch %s, %s (one-off, 10-30 s on a CPU)",
             config.backbone, side, side, "dynamic" if batch > 1 else 1, loaded.precision)
    # the input made as embed_images makes its own (an inference tensor: a tensor made outside
    # inference mode fails the compiled graph's guards and compiles it again)
    with torch.inference_mode(), autocast(loaded.precision, loaded.device):
        inputs = module.trunk_input(torch.zeros(batch, 1, side, side, device=loaded.device))
        if batch > 1:
            torch._dynamo.mark_dynamic(inputs, 0)
        compiled(inputs)
    seconds = time.perf_counter() - started
    if compiled.failed is None:
        log.info("--compile: trunk compiled in %.1f s", seconds)
        return seconds
    return None
