"""Global pooling of a feature map and attention maps over it: the global classifier's options.

X_RAY (Weakly supervised classification and localization of chest X-rays, after the jfhealthcare
CheXpert code) trains its classifiers with a choice of pooling and an optional attention map;
:class:`chextriev.model.baselines.GlobalResNet` takes the same (``ModelConfig.pooling``,
``ModelConfig.attention``). Feature maps are ``x (B, F, h, w)``.

Poolings ``(B, F, h, w) -> (B, F)`` (:func:`pool`):

* ``avg``: ``mean_hw x``;
* ``max``: ``max_hw x``;
* ``lse``: log-sum-exp, ``m + (1 / gamma) log(mean_hw exp(gamma (x - m)))`` with ``m = max_hw x``
  (the numerically stable form of ``(1 / gamma) log mean_hw exp(gamma x)``): the average as
  ``gamma -> 0``, the maximum as ``gamma -> inf`` (X_RAY's default ``gamma`` 10).

PCAM, probabilistic class activation map pooling (Ye et al., "Weakly Supervised Lesion
Localization With Probabilistic-CAM Pooling", 2020; :func:`pcam_pool`): with a classifier
``f_c`` per class (the published code's 1x1 convolution ``f_c(v) = w_c . v + b_c``; the global
classifier here uses its LayerNorm + Linear head, ``f_c(v) = w_c . LN(v) + b_c``),

* logit map ``s_c(h, w) = f_c(x(h, w))``, probability map ``p_c = sigmoid(s_c)``;
* attention weights ``a_c(h, w) = p_c(h, w) / sum_hw p_c``;
* pooled feature ``x_c = sum_hw a_c(h, w) x(h, w)`` (one per class: ``(B, C, F)``);
* image logit ``y_c = f_c(x_c)``, the same classifier.

Each class pools the map with its own probability map, which is also that class's
localization heatmap (``chextriev.localization.pcam``).

Attention maps ``(B, F, h, w) -> (B, F, h, w)`` (:func:`build_attention`), X_RAY's three:

* ``channel``: squeeze-and-excitation (Hu et al.): ``x * sigmoid(W2 relu(W1 mean_hw x))``,
  reduction 2 (X_RAY's ``CAModule``);
* ``spatial``: the position attention module of DANet (Fu et al., CVPR 2019):
  ``gamma * (V softmax(Q^T K)^T) + x`` with ``Q, K`` 1x1 convolutions to ``F / 8`` channels,
  ``V`` to ``F``, and ``gamma`` a learned scalar starting at 0 (X_RAY's ``SAModule``);
* ``pyramid``: feature pyramid attention (Li et al., Pyramid Attention Network 2018): a 1x1
  branch weighted by a three-level 7/5/3 convolution pyramid of the map, plus the global
  average branch (X_RAY's ``FPAModule``, BatchNorm).

Departures from the X_RAY code, on purpose: the attention map is applied once to the feature
map (its PCAM loop re-applied it once per class, so class ``c`` saw ``c + 1`` attention passes,
and its DenseNet path computed the attended map and then discarded it); the position
attention's softmax is over the last axis as in DANet (X_RAY passed ``dims=-1``, which
``torch.nn.functional.softmax`` does not accept); the pyramid upsamples each level to the size
of the next finer one (the published ``height // 4`` and ``height // 2`` are those sizes only when
the map's side is a multiple of 4, and 0 on a map of side 1-3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chextriev.errors import UnknownNameError
from chextriev.model.config import ATTENTIONS, POOLINGS

__all__ = ["ATTENTIONS", "FIXED_POOLINGS", "POOLINGS", "ChannelAttention", "PositionAttention",
           "PyramidAttention", "build_attention", "lse_pool", "pcam_pool", "pool"]

#: Poolings without parameters (``pcam`` needs the classifier).
FIXED_POOLINGS = ("avg", "max", "lse")


def lse_pool(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(B, F, h, w) -> (B, F)``: ``m + log(mean_hw exp(gamma (x - m))) / gamma``, ``m = max_hw x``."""
    flat = x.flatten(2)
    peak = flat.amax(dim=2, keepdim=True)
    mean_exp = torch.exp(gamma * (flat - peak)).mean(dim=2, keepdim=True)
    return (peak + torch.log(mean_exp) / gamma).squeeze(2)


def pool(x: torch.Tensor, kind: str, gamma: float = 10.0) -> torch.Tensor:
    """A fixed pooling (``avg``, ``max``, ``lse``) of ``x (B, F, h, w)`` -> ``(B, F)``."""
    if kind == "avg":
        return x.mean(dim=(2, 3))
    if kind == "max":
        return x.amax(dim=(2, 3))
    if kind == "lse":
        return lse_pool(x, gamma)
    raise UnknownNameError("fixed pooling", kind, FIXED_POOLINGS)


def pcam_pool(x: torch.Tensor, classifier: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCAM pooling of ``x (B, F, h, w)`` with ``classifier``, any module mapping feature
    vectors ``(..., F) -> (..., C)`` (one score per class: ``f_c``).

    Returns ``(logits (B, C), pooled (B, C, F), probability maps (B, C, h, w))``: the image logit
    of class ``c`` is ``f_c`` of the map pooled with that class's own normalised probability map
    (module docstring).
    """
    logit_map = classifier(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # f at every location: (B, C, h, w)
    probability = torch.sigmoid(logit_map)
    weights = probability / probability.sum(dim=(2, 3), keepdim=True)
    pooled = torch.einsum("bchw,bfhw->bcf", weights, x)
    logits = torch.diagonal(classifier(pooled), dim1=1, dim2=2)  # f_c of the pooled x_c: (B, C)
    return logits, pooled, probability


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(mean_hw x))))``, reduction 2."""

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(channels, max(channels // reduction, 1))
        self.fc2 = nn.Linear(max(channels // reduction, 1), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class PositionAttention(nn.Module):
    """DANet's position attention: ``gamma * (V softmax(Q^T K)^T) + x``, ``gamma`` from 0."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, F/8, hw)
        k = self.key(x).flatten(2)
        attention = torch.softmax(torch.einsum("bki,bkj->bij", q, k), dim=-1)  # (B, hw, hw)
        refined = torch.einsum("bfj,bij->bfi", self.value(x).flatten(2), attention).view(b, f, h, w)
        return self.gamma * refined + x


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2), nn.BatchNorm2d(cout), nn.ReLU())


class PyramidAttention(nn.Module):
    """Feature pyramid attention: ``up(pyramid) * mid(x) + up(gap(x))`` (module docstring)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gap = _conv_bn_relu(channels, channels, 1)
        self.mid = _conv_bn_relu(channels, channels, 1)
        self.down1 = _conv_bn_relu(channels, 1, 7, stride=2)
        self.down2 = _conv_bn_relu(1, 1, 5, stride=2)
        self.down3 = _conv_bn_relu(1, 1, 3, stride=2)
        self.scale1 = _conv_bn_relu(1, 1, 7)
        self.scale2 = _conv_bn_relu(1, 1, 5)
        self.scale3 = _conv_bn_relu(1, 1, 3)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gap = self.gap(x.mean(dim=(2, 3), keepdim=True)).expand_as(x)  # bilinear up of a 1x1 map
        mid = self.mid(x)
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        s2 = self.scale2(d2) + self._up(self.scale3(d3), d2)
        s1 = self.scale1(d1) + self._up(s2, d1)
        return self._up(s1, x) * mid + gap


_ATTENTION_MODULES = {"channel": ChannelAttention, "spatial": PositionAttention, "pyramid": PyramidAttention}
assert set(_ATTENTION_MODULES) | {"none"} == set(ATTENTIONS)
assert set(FIXED_POOLINGS) | {"pcam"} == set(POOLINGS)


def build_attention(kind: str, channels: int) -> nn.Module | None:
    """The attention map ``kind`` over ``channels``-channel maps (``None`` for ``"none"``)."""
    if kind == "none":
        return None
    if kind not in _ATTENTION_MODULES:
        raise UnknownNameError("attention map", kind, ATTENTIONS)
    return _ATTENTION_MODULES[kind](channels)
