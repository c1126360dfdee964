"""A tiny convolutional backbone, a light FPN and the shared dense head of the demo detectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "STRIDES", "DenseHead", "Scale", "TinyBackbone", "conv_bn_relu", "prior_bias"]

STRIDES = (8, 16, 32)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> nn.Sequential:
    """``Conv2d`` (no bias) → ``BatchNorm2d`` → ``ReLU``, padded to keep ``H / stride``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def prior_bias(prior_prob: float = 0.01) -> float:
    r"""Bias that makes a sigmoid output ``prior_prob`` at start: :math:`-\log((1 - p) / p)` (−log 99 for 0.01)."""
    return -math.log((1 - prior_prob) / prior_prob)


class TinyBackbone(nn.Module):
    """Five stride-2 stages of two ``conv-BN-ReLU`` each; returns the stride 8, 16 and 32 maps.

    Args:
        widths: channels of the five stages (strides 2 to 32).

    Shape:
        - Input: ``(B, 3, H, W)``.
        - Output: ``[(B, widths[2], H/8, W/8), (B, widths[3], H/16, W/16), (B, widths[4], H/32, W/32)]``.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96, 128)) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"`widths` needs 5 stage widths, got {list(widths)}")
        ins = (3, *widths[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn_relu(i, o, stride=2), conv_bn_relu(o, o)) for i, o in zip(ins, widths, strict=True)
        )
        self.out_channels = tuple(widths[2:])

    def forward(self, images: Tensor) -> list[Tensor]:
        outputs = []
        x = images
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index >= 2:
                outputs.append(x)
        return outputs


class FPN(nn.Module):
    """Feature pyramid: ``1×1`` laterals, top-down nearest upsampling and addition, ``3×3`` smoothing.

    Args:
        in_channels: channels of each input level, finest first.
        channels: channels of every output level.

    Shape:
        ``[(B, in_channels[l], H_l, W_l)]`` → ``[(B, channels, H_l, W_l)]``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 32) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.laterals, features, strict=True)]
        for level in range(len(laterals) - 1, 0, -1):
            finer = laterals[level - 1]
            laterals[level - 1] = finer + F.interpolate(laterals[level], size=finer.shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.smooth, laterals, strict=True)]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per level for the regression outputs of FCOS, ATSS and GFL)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DenseHead(nn.Module):
    """Classification and regression towers shared by every level, with their output convolutions.

    The classification tower feeds ``cls_out`` (bias at :func:`prior_bias`); the regression tower feeds
    ``reg_out`` (times a learnable per-level :class:`Scale` when ``scale_reg``) and, when
    ``extra_channels > 0``, ``extra_out`` (centerness or objectness, bias ``extra_bias``). Output
    convolutions start from ``N(0, 0.01)`` weights, as in MMDetection's dense heads.

    Args:
        channels: input and tower channels.
        cls_channels: classification outputs per cell (``A·C``).
        reg_channels: regression outputs per cell (``A·4`` or ``4·(reg_max + 1)``).
        extra_channels: outputs of the extra regression-side branch (0: none).
        num_levels: pyramid levels (for the per-level scales).
        num_convs: convolutions per tower.
        scale_reg: multiply ``reg_out`` by a learnable scale per level.
        extra_bias: initial bias of ``extra_out``.

    Shape:
        ``[(B, channels, H_l, W_l)]`` → ``(cls [(B, cls_channels, H_l, W_l)], reg [...], extra [...])``
        (``extra`` empty without the branch).
    """

    def __init__(
        self,
        channels: int,
        cls_channels: int,
        reg_channels: int,
        extra_channels: int = 0,
        num_levels: int = len(STRIDES),
        num_convs: int = 2,
        scale_reg: bool = False,
        extra_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.cls_tower = _tower(channels, num_convs)
        self.reg_tower = _tower(channels, num_convs)
        self.cls_out = nn.Conv2d(channels, cls_channels, 3, padding=1)
        self.reg_out = nn.Conv2d(channels, reg_channels, 3, padding=1)
        self.extra_out = nn.Conv2d(channels, extra_channels, 3, padding=1) if extra_channels else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if scale_reg else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_out.bias, prior_bias())
        if self.extra_out is not None:
            nn.init.constant_(self.extra_out.bias, extra_bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_maps, reg_maps, extra_maps = [], [], []
        for level, x in enumerate(features):
            cls_feat = self.cls_tower(x)
            reg_feat = self.reg_tower(x)
            cls_maps.append(self.cls_out(cls_feat))
            reg = self.reg_out(reg_feat)
            reg_maps.append(self.scales[level](reg) if self.scales is not None else reg)
            if self.extra_out is not None:
                extra_maps.append(self.extra_out(reg_feat))
        return cls_maps, reg_maps, extra_maps
