"""DM-AT's WideResNet (DeepMind's pre-activation WRN with SiLU), for any depth and width.

Facts from DM-AT core/models/wideresnetwithswish.py: normalization (x - mean) / std inside the model,
pre-activation blocks, explicit "SAME" padding (stride 1: 1 on every side; stride 2: 0 before
and 1 after, with padding=0 convolutions), bias-free convolutions, BatchNorm momentum 0.01,
conv init N(0, sqrt(2 / (k * k * out_channels))), and the module names init_conv,
layer.N.block.M, batchnorm, relu, logits, so DM-AT checkpoints load by name (after their
DataParallel prefix "module.0." is removed).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dra.registry import MODEL_FAMILIES

BATCHNORM_MOMENTUM = 0.01  # DM-AT wideresnetwithswish.py (PyTorch convention: running = 0.99 running + 0.01 batch)

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU}


def _same_padding(x: torch.Tensor, stride: int) -> torch.Tensor:
    # TensorFlow "SAME" for a 3x3 kernel: stride 2 pads only after, so outputs align with Haiku.
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    return F.pad(x, (0, 1, 0, 1))


class _Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=BATCHNORM_MOMENTUM)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=BATCHNORM_MOMENTUM)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre_activated = self.relu_0(self.batchnorm_0(x))
        # With a projection shortcut the pre-activated tensor feeds both paths (DM-AT's rule).
        residual = self.shortcut(pre_activated) if self.has_shortcut else x
        out = self.conv_0(_same_padding(pre_activated, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return residual + out


class _BlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int,
                 activation: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(num_blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNet(nn.Module):
    """WRN-depth-width; takes images in [0, 1] (NCHW) and returns logits."""

    def __init__(self, depth: int, width: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], activation: str = "silu"):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(
                f"arch.depth: a WideResNet needs depth = 6n + 4 with n >= 1 (10, 16, 28, 34, 70, ...), got {depth}")
        if width < 1:
            raise ValueError(f"arch.width: must be a positive integer, got {width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"arch.activation: one of {sorted(ACTIVATIONS)}, got {activation!r}")
        act = ACTIVATIONS[activation]
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        # Non-persistent: the state dict then has exactly DM-AT's keys.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.init_conv = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _BlockGroup(blocks_per_group, widths[0], widths[1], 1, act),
            _BlockGroup(blocks_per_group, widths[1], widths[2], 2, act),
            _BlockGroup(blocks_per_group, widths[2], widths[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3], momentum=BATCHNORM_MOMENTUM)
        self.relu = act()
        self.logits = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.init_conv((x - self.mean) / self.std)
        out = self.relu(self.batchnorm(self.layer(out)))
        # Global mean over H, W: DM-AT's avg_pool2d(8) on its 8x8 map, and valid for any input size.
        features = out.mean(dim=(2, 3))
        return self.logits(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


# keys: the config arch entry's keys of this family, as JSON schema (config/schema.yaml holds only `family`);
# required: those it must have; recipe_keys: those of the resolved recipe, with what they hold
@MODEL_FAMILIES.register(
    "wrn", required=("depth", "width"),
    keys={"depth": {"type": "integer", "minimum": 10}, "width": {"$ref": "#/$defs/positive_int"},
          "activation": {"enum": ["silu", "relu"]}},
    recipe_keys={"depth": {"type": "integer", "minimum": 10, "description": "an integer 6n + 4 (e.g. 28)"},
                 "width": {"type": "integer", "minimum": 1, "description": "an integer >= 1"}})
def build_wide_resnet(arch: dict, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> WideResNet:
    """{family: wrn, depth, width, activation}: DM-AT's WideResNet."""
    return WideResNet(int(arch["depth"]), int(arch["width"]), num_classes, mean, std,
                      activation=arch.get("activation", "silu"))
