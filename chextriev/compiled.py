"""The frozen backbone trunk compiled ahead of time (``--compile``, on by default), cached on disk.

>>> trunk = compile_trunk(module, precision="bf16", batch=1, device="cpu")   # doctest: +SKIP
>>> module.compiled_trunk = trunk          # feature_map runs it when no gradient is wanted

The frozen trunk (ResNet50 at 512 px: ~90 % of an upload search) is exported with
``torch.export`` and compiled by TorchInductor's ahead-of-time path (AOTInductor) with
``freezing``: its weights become constants, batch norms fold into the convolutions, ReLUs and
residual additions fuse into their producers, and oneDNN convolutions get pre-packed weights.
On the project's 2-core CPU the trunk is 1.35x faster than eager in bf16 and 1.5x in fp32
(BENCHMARKS.md "Compiled by default, cached on disk"); the features stay at cosine >= 0.9999 to
the eager ones of the same precision.

**The compiled trunk is a file.** The package (a ``.pt2`` holding the compiled shared library and
the folded weights, ~50 MB for ResNet50 in bf16) is written once to the compiled cache and loaded
by every later process in well under a second: a restarted server, a second ``chextriev index``
run, every worker of a pre-forked server. The cache folder is ``$CHEXTRIEV_COMPILE_CACHE``, else
``$XDG_CACHE_HOME/chextriev/compiled``, else ``~/.cache/chextriev/compiled``
(:func:`cache_dir`); it can be deleted at any time (the next start compiles again). A package is
named by everything its code depends on (:func:`package_key`): the trunk's architecture and its
weights in the precision it runs in (two checkpoints trained on the same frozen backbone share
one), the input shape, the batch mode, the device, torch's version and the CPU's vector ISA.
Processes that start together (server workers) compile once: the others wait on a lock file and
load the result. The ahead-of-time package was chosen over torch's own just-in-time caches
(TorchInductor's FX-graph cache, torch.compiler's portable cache artifacts) because those still
trace the model with Dynamo and AOT autograd at every start (``freezing`` bypasses the
AOT-autograd cache): BENCHMARKS.md "Compiled by default, cached on disk" has the figures.

* Only inference uses it: with gradients enabled (Grad-CAM, training), or for an input of
  another shape or type, the eager trunk runs.
* Batch mode: a batch of 1 (the server) is compiled for exactly one image (faster than the
  dynamic code at that size); anything larger (indexing, evaluation, crop mode's 18 crops per
  image) is compiled with a dynamic batch dimension, so the last, shorter batch runs compiled too.
* Compiling needs a C++ compiler (``$CXX``, else ``g++``); loading a cached package does not.
  Without one, or when compiling fails, one line is logged and the eager trunk runs:
  ``--compile`` never makes a command fail.
* The graph transformer and heads stay eager: compiled, they were no faster (BENCHMARKS.md).

``--compile on|off`` on ``index``, ``serve`` and ``evaluate`` (default ``on``;
``CHEXTRIEV_COMPILE`` changes the default of all three; the test suite sets it to ``off``,
``tests/conftest.py``). The Python API (``load_checkpoint``) defaults to eager.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "CHEXTRIEV_COMPILE"
CACHE_ENV_VAR = "CHEXTRIEV_COMPILE_CACHE"
#: TorchInductor options: weights as constants (batch norm folded, weights pre-packed).
INDUCTOR_OPTIONS = {"freezing": True}
#: Bumped when what a package holds or how it is called changes: older packages are not loaded.
PACKAGE_FORMAT = 1

COMPILE_MODES = ("off", "on")
#: What ``--compile`` is when neither the flag nor ``$CHEXTRIEV_COMPILE`` says.
DEFAULT_COMPILE = "on"
_SPELLINGS = {"on": "on", "1": "on", "true": "on", "yes": "on",
              "off": "off", "0": "off", "false": "off", "no": "off"}

#: What this process did: ``compiled`` (packages built here), ``loaded`` (packages read from the
#: cache, including ones just built), ``failed`` (fell back to eager). For tests and benchmarks.
STATS: Counter = Counter()
_warned: set[str] = set()


def parse_compile(value) -> str:
    """``on``/``off`` from a flag, setting or environment value (also 1/0, true/false,
    yes/no; empty or None: the default, :data:`DEFAULT_COMPILE`). Raises
    :class:`~chextriev.errors.UnknownNameError` for anything else."""
    from chextriev.errors import UnknownNameError

    if value is True or value is False:
        return "on" if value else "off"
    text = "" if value is None else str(value).strip().lower()
    if not text:
        return DEFAULT_COMPILE
    if text not in _SPELLINGS:
        raise UnknownNameError("compile mode", str(value), COMPILE_MODES)
    return _SPELLINGS[text]


def default_compile() -> str:
    """``$CHEXTRIEV_COMPILE`` when set, else :data:`DEFAULT_COMPILE` (``"on"``): the default of
    the ``--compile`` flags (argument parsing checks it with :func:`parse_compile`). Imports
    nothing heavy."""
    return os.environ.get(ENV_VAR, "").strip().lower() or DEFAULT_COMPILE


def cache_dir() -> Path:
    """The compiled cache: ``$CHEXTRIEV_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/chextriev/compiled``,
    else ``~/.cache/chextriev/compiled``."""
    explicit = os.environ.get(CACHE_ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    root = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(root) if root else Path.home() / ".cache") / "chextriev" / "compiled"


def find_compiler() -> str | None:
    """The C++ compiler TorchInductor would use (``$CXX``, else ``g++``), or None when it does
    not run."""
    try:
        from torch._inductor import cpp_builder

        return cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001 - InvalidCxxCompiler, or a torch without this helper
        return None


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


class CompiledTrunk:
    """A loaded compiled package of one trunk, with the eager trunk as its fallback.

    Not an ``nn.Module`` on purpose: kept as a plain attribute of the feature module, it adds no
    state-dict keys and no parameters (the eager trunk's are the ones saved and trained).
    ``path``: the package; ``how``: ``"compiled"`` (built by this process) or ``"cached"``;
    ``seconds``: what building or loading it took.
    """

    def __init__(self, trunk, runner, *, path: Path, precision: str, input_shape: tuple[int, ...],
                 batch: int | None, how: str, seconds: float):
        self.trunk = trunk
        self.runner = runner
        self.path = Path(path)
        self.precision = precision
        self.input_shape = tuple(input_shape)  # (C, H, W)
        self.batch = batch  # 1, or None: any batch
        self.how = how
        self.seconds = seconds
        self.failed: str | None = None

    def accepts(self, inputs) -> bool:
        """Whether ``inputs`` is what the package was compiled for (else the eager trunk runs)."""
        import torch

        return (inputs.dim() == 4 and tuple(inputs.shape[1:]) == self.input_shape
                and (self.batch is None or inputs.shape[0] == self.batch)
                and inputs.dtype == torch.float32 and inputs.is_contiguous(memory_format=torch.channels_last))

    def __call__(self, inputs):
        import torch

        if self.failed is not None or torch.is_grad_enabled() or not self.accepts(inputs):
            return self.trunk(inputs)
        try:
            return self.runner(inputs)
        except Exception as error:  # noqa: BLE001 - the runtime raises many kinds
            self.failed = describe_failure(error)
            STATS["failed"] += 1
            log.warning("--compile: the compiled backbone trunk failed (%s); running it eagerly", self.failed)
            return self.trunk(inputs)


def describe_failure(error: BaseException) -> str:
    """One line for the log: the exception's type and the most specific line of its message
    (TorchInductor wraps the cause: "backend='inductor' raised:" then the real error)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.endswith("raised:") and not line.startswith("Set TORCH")]
    return f"{type(error).__name__}: {(useful or lines or [''])[0][:300]}"


def _weights_digest(module) -> str:
    """sha256 of ``module``'s parameters and buffers as they are now: names, dtypes, shapes and
    bytes (with the precision compiled for, the package key: under ``auto`` the fp32 weights)."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _platform() -> dict:
    """What compiled code depends on beyond the model: torch's version, and the machine (its
    architecture and CPU flags: the generated code uses the vector instructions found)."""
    import platform

    import torch

    from chextriev.precision import cpu_flags

    flags = cpu_flags()
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest() if flags else platform.processor()}


def package_key(trunk, *, precision: str, input_shape, batch: int | None, device) -> str:
    """The name of a package: sha256 of everything its compiled code depends on."""
    import torch

    device = torch.device(device)
    details = {"format": PACKAGE_FORMAT, "architecture": repr(trunk), "weights": _weights_digest(trunk),
               "precision": precision, "input_shape": list(input_shape), "batch": batch,
               "device": device.type, "options": INDUCTOR_OPTIONS, **_platform()}
    if device.type == "cuda":
        details["gpu"] = torch.cuda.get_device_name(device)
    return hashlib.sha256(json.dumps(details, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` (POSIX ``flock``; no locking where there is none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _writable_cache() -> Path:
    """:func:`cache_dir`, created; a private temporary folder (logged) when it cannot be written."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.mkdtemp(prefix="chextriev-compiled-"))
    import atexit

    atexit.register(shutil.rmtree, fallback, True)
    _warn_once("cache", "--compile: the compiled cache %s cannot be written: compiling for this process only "
               "(set %s to a writable folder)", folder, CACHE_ENV_VAR)
    return fallback


def _exportable(trunk, precision: str, device_type: str):
    """``trunk`` under its precision's autocast, as one module ``torch.export`` can trace."""
    import torch

    class Exportable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk

        def forward(self, inputs):
            if precision == "bf16":
                with torch.autocast(device_type, dtype=torch.bfloat16):
                    return self.trunk(inputs)
            return self.trunk(inputs)

    return Exportable().eval()


def _build_package(trunk, *, precision: str, example, batch: int | None, device, path: Path) -> None:
    """Export ``trunk`` and compile it ahead of time into ``path`` (written whole or not at all)."""
    import torch
    from torch.export import Dim

    dynamic = None if batch == 1 else ({0: Dim("batch", min=1)},)
    with torch.no_grad():
        program = torch.export.export(_exportable(trunk, precision, torch.device(device).type), (example,),
                                      dynamic_shapes=dynamic)
    from chextriev.files import atomic_open

    with atomic_open(path, "wb") as handle:  # complete or absent (chextriev.files)
        torch._inductor.aoti_compile_and_package(program, package_path=handle,
                                                 inductor_configs=dict(INDUCTOR_OPTIONS))


def _load_package(path: Path, device):
    import torch

    index = torch.device(device).index
    return torch._inductor.aoti_load_package(str(path), device_index=-1 if index is None else index)


def compile_trunk(module, *, precision: str, batch: int, device) -> CompiledTrunk | None:
    """The compiled trunk of ``module`` (a backbone feature module: ``trunk``, ``trunk_input``,
    ``config``) for ``precision`` and batches of ``batch`` images, loaded from the compiled cache
    or compiled now and stored there. Returns None (logged) when it cannot be had: no C++ compiler
    and nothing cached, a trunk that cannot be exported, a compiler error.

    ``precision`` may differ from the precision of the trunk's weights now (``auto`` compiles
    bf16 before the first batch has settled it): a bf16 copy is compiled then.
    """
    import copy

    import torch

    from chextriev.precision import prepare_model, weights_precision
    from chextriev.vocab import NUM_REGIONS

    config = module.config
    crops = config.has_regions and config.feature_mode == "crop"
    side = config.crop_size if crops else config.image_size
    # a batch of 1 compiled static; else (crop mode: up to 18 crops per image) dynamic
    static_batch = 1 if (not crops and int(batch) <= 1) else None
    label = (f"{config.backbone} trunk ({side} x {side} px, batch {'1' if static_batch else 'dynamic'}, "
             f"{precision})")
    started = time.perf_counter()
    try:
        trunk = module.trunk
        with torch.no_grad():
            example = module.trunk_input(torch.zeros(static_batch or 2 * (NUM_REGIONS if crops else 1), 1, side,
                                                     side, device=device))
        input_shape = tuple(example.shape[1:])
        key = package_key(trunk, precision=precision, input_shape=input_shape, batch=static_batch, device=device)
        folder = _writable_cache()
        path = folder / f"trunk-{config.backbone}-{side}px-{precision}-{'b1' if static_batch else 'dyn'}-{key[:24]}.pt2"
        how = "cached"
        if not path.is_file():
            compiler = find_compiler()
            if compiler is None:
                _warn_once("compiler", "--compile: no C++ compiler found (CXX=%s): the backbone runs eagerly "
                           "(install g++ to run it compiled, or pass --compile off to silence this)",
                           os.environ.get("CXX", "g++"))
                STATS["failed"] += 1
                return None
            with _file_lock(path.with_name(path.name + ".lock")):
                if not path.is_file():  # no other process built it while this one waited
                    log.info("--compile: compiling the %s with %s (one-off, about 1-2 min on 2 CPU cores), "
                             "cached in %s", label, compiler, folder)
                    if weights_precision(trunk) != precision:  # `auto` before its check: a bf16 copy
                        with torch.inference_mode(False):
                            trunk = prepare_model(copy.deepcopy(trunk), precision)
                    _build_package(trunk, precision=precision, example=example, batch=static_batch, device=device,
                                   path=path)
                    STATS["compiled"] += 1
                    how = "compiled"
        try:
            runner = _load_package(path, device)
        except Exception as error:  # a truncated or foreign file: built again next time
            path.unlink(missing_ok=True)
            raise RuntimeError(f"the cached package {path.name} could not be loaded and was removed "
                               f"({describe_failure(error)})") from error
        STATS["loaded"] += 1
    except Exception as error:  # noqa: BLE001 - export and compilation raise many kinds
        STATS["failed"] += 1
        log.warning("--compile: compiling the backbone trunk failed (%s); running it eagerly",
                    describe_failure(error))
        return None
    seconds = time.perf_counter() - started
    log.info("--compile: %s %s in %.1f s (%s)", label, "compiled" if how == "compiled" else "loaded from the cache",
             seconds, path)
    return CompiledTrunk(module.trunk, runner, path=path, precision=precision, input_shape=input_shape,
                         batch=static_batch, how=how, seconds=seconds)


def trunk_module(model):
    """The feature module of ``model`` whose frozen trunk can be compiled, or None (logged)."""
    module = model.feature_module() if hasattr(model, "feature_module") else None
    if module is None or not hasattr(module, "trunk"):
        log.info("--compile: %s has no backbone trunk to compile; running eagerly", type(model).__name__)
        return None
    if getattr(module.config, "train_backbone", False):
        log.info("--compile: the backbone trains with the model; running it eagerly")
        return None
    eager = getattr(getattr(module, "trunk", None), "eager_reason", None)  # a trunk measured slower compiled
    if eager:
        log.info("--compile: %s; running it eagerly", eager)
        return None
    return module


def compiled_trunk(model) -> CompiledTrunk | None:
    """The :class:`CompiledTrunk` ``model`` runs now, or None."""
    module = model.feature_module() if hasattr(model, "feature_module") else None
    return getattr(module, "compiled_trunk", None) if module is not None else None
