"""BatchNorm over a fixed number of images, whatever the GPUs and micro-batches (recipe key
`batchnorm_group`).

DM-AT trains with nn.DataParallel, so each BatchNorm normalises over one GPU's share of the batch:
what it computes depends on how many GPUs ran it. Here the number is configured: in train mode each
BatchNorm cuts its input into groups of `batchnorm_group` consecutive images (the last one shorter
when the group does not divide the input) and normalises each group by its own statistics ("ghost"
batch normalisation). Micro-batches and ranks are cut between groups (dra.training.distributed), so
one GPU with k micro-batches, W GPUs, or one large micro-batch compute the same thing.

Running statistics: only the FIRST group of an input moves them, as DataParallel keeps the buffers
of device 0's replica (which saw the first chunk of the batch); the training loop keeps the first
micro-batch's update and DDP broadcasts rank 0's buffers, so the running statistics of a step are
those of the first group of the global batch, on any hardware. In eval mode the running statistics
normalise each image by itself and nothing is cut.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _grouped_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    plain = type(self).forward
    if not self.training or len(x) <= self.batchnorm_group:
        return plain(self, x)
    groups = torch.split(x, self.batchnorm_group)
    outputs = [plain(self, groups[0])]  # the one group that may move the running statistics
    tracked = self.track_running_stats
    self.track_running_stats = False  # train mode without tracking: batch statistics, buffers untouched
    try:
        outputs += [plain(self, group) for group in groups[1:]]
    finally:
        self.track_running_stats = tracked
    return torch.cat(outputs)


def normalise_in_groups(model: nn.Module, group: int) -> int:
    """Make every BatchNorm of `model` normalise groups of `group` images in train mode (see the
    module docstring); returns how many layers it changed. Parameters, buffers and state-dict
    names stay as they are."""
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.batchnorm_group = group
        layer.forward = types.MethodType(_grouped_forward, layer)
    return len(layers)
