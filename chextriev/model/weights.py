"""Read a user's local backbone weights into a torchvision network (nothing is downloaded).

Two formats (``ModelConfig.backbone_weights_format``, ``chextriev train
--backbone-weights-format``):

* ``torchvision`` — the ``.pth`` file torchvision itself would download for the backbone
  (``resnet50-0676ba61.pth``, ``densenet121-a639ec97.pth``, ``efficientnet_b0_rwightman-7f5810bc.pth``,
  ...): a state dict of the whole network. DenseNet files of torchvision's old key layout
  (``denselayer1.norm.1.weight``) are renamed as torchvision renames them;
* ``xrv`` — torchxrayvision's DenseNet121 (``xrv.models.DenseNet``): the same ``features.*``
  names, a one-channel ``features.conv0``, an 18-class ``classifier.*`` and an ``op_threshs``
  buffer. torchxrayvision publishes its weights as pickled model objects, which cannot be read
  safely; save their ``state_dict()`` once (the error says how).

The classifier keys are ignored (the project trains its own heads); every trunk key must be in
the file with the right shape, and no other key may be: a wrong file or a wrong architecture
is a :class:`~chextriev.model.architectures.BackboneWeightsError` that names the expected keys and,
where it can tell, the architecture or format the file does fit. A ``{"state_dict": ...}`` or
``{"model": ...}`` wrapper and a ``module.`` (DataParallel) prefix are unwrapped.
"""

from __future__ import annotations

import functools
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from chextriev.model.architectures import (
    ARCHITECTURES,
    BackboneWeightsError,
    full_network,
    input_channels,
)
from chextriev.model.config import XRV_BACKBONES

# torchvision's own remapping of DenseNet files saved before module names lost their dots
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
#: keys a torchxrayvision file carries besides the network (its per-class operating points)
XRV_EXTRA_KEYS = ("op_threshs",)
# batch-norm step counters: absent from files saved before torch 0.4.1 (torchvision's resnet50
# file among them), unused by a frozen or momentum-updated batch norm; zero when absent
_OPTIONAL_SUFFIX = "num_batches_tracked"

_CONVERT_HINT = (
    "torchxrayvision publishes pickled model objects; save the state dict once, with torchxrayvision "
    "installed and only for a file you trust: python -c \"import torch; torch.save(torch.load('{path}', "
    "weights_only=False).state_dict(), '{path}.state.pt')\" and pass {path}.state.pt"
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (read with ``weights_only=True``), unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            raise BackboneWeightsError(f"cannot read backbone weights {path}: not a torch state-dict file") from error
        raise BackboneWeightsError(f"{path} is not a plain state dict (it pickles {found.group(1)}); "
                                   + _CONVERT_HINT.format(path=path)) from error
    except (OSError, RuntimeError, ValueError, EOFError) as error:
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {error}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}


@functools.cache
def expected_shapes(name: str, weights_format: str = "torchvision") -> dict[str, tuple[int, ...]]:
    """Trunk keys of backbone ``name`` in ``weights_format`` and their shapes (classifier excluded)."""
    with torch.device("meta"):
        net = full_network(name, weights_format)
    heads = ARCHITECTURES[name].head_prefixes
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith(heads)}


def _mismatches(state: dict[str, torch.Tensor], name: str, weights_format: str) -> tuple[list, list, list]:
    expected = expected_shapes(name, weights_format)
    heads = ARCHITECTURES[name].head_prefixes
    extras = XRV_EXTRA_KEYS if weights_format == "xrv" else ()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected and not k.startswith(heads) and k not in extras]
    shapes = [(k, tuple(state[k].shape), shape) for k, shape in expected.items()
              if k in state and tuple(state[k].shape) != shape]
    return missing, unexpected, shapes


def _fits(state: dict[str, torch.Tensor], name: str, weights_format: str) -> bool:
    return not any(_mismatches(state, name, weights_format))


def _guess(state: dict[str, torch.Tensor]) -> str:
    """A hint naming the backbone / format the file fits, if any."""
    for weights_format in ("torchvision", "xrv"):
        for name in ARCHITECTURES:
            if weights_format == "xrv" and name not in XRV_BACKBONES:
                continue
            if _fits(state, name, weights_format):
                return f" The file fits backbone {name} with weights format {weights_format}."
    return ""


def _listing(items: list, limit: int = 5) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def load_backbone_weights(net: nn.Module, name: str, path: str | Path, weights_format: str) -> None:
    """Load the state dict at ``path`` into ``net`` (:func:`full_network` of ``name`` in
    ``weights_format``, possibly uninitialised): every trunk tensor from the file (batch-norm
    step counters zero where the file has none), the classifier left alone.

    Raises :class:`BackboneWeightsError` when the file cannot be read or does not fit.
    """
    state = read_state_dict(path)
    missing, unexpected, shapes = _mismatches(state, name, weights_format)
    if missing or unexpected or shapes:
        expected = expected_shapes(name, weights_format)
        first = ARCHITECTURES[name].first_conv
        problems = []
        if missing:
            problems.append(f"missing {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected {_listing(unexpected)}")
        if shapes:
            problems.append("wrong shapes " + _listing([f"{k}: file {f} vs {e}" for k, f, e in shapes]))
        hint = _guess(state)
        if not hint and first in state and state[first].ndim == 4 and state[first].shape[1] != input_channels(weights_format):
            hint = (f" Its first convolution takes {state[first].shape[1]} channel(s): "
                    f"{'xrv' if state[first].shape[1] == 1 else 'torchvision'} weights?")
        raise BackboneWeightsError(
            f"{path} does not fit a {name} backbone in weights format {weights_format}: {'; '.join(problems)}. "
            f"Expected {len(expected)} trunk tensors such as "
            + ", ".join(f"{k} {expected[k]}" for k in list(expected)[:3])
            + (" (a torchxrayvision densenet121 state dict)" if weights_format == "xrv" else
               f" (the state dict torchvision's {name} weights file holds)") + "." + hint
        )
    trunk_state = {k: state.get(k, torch.zeros((), dtype=torch.long)) for k in expected_shapes(name, weights_format)}
    result = net.load_state_dict(trunk_state, strict=False)
    heads = ARCHITECTURES[name].head_prefixes
    leftover = [k for k in result.missing_keys if not k.startswith(heads)]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above
        raise BackboneWeightsError(f"{path}: could not load {leftover[:5]} {result.unexpected_keys[:5]}")
