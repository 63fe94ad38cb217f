"""DM-AT's weight averaging (gowal21uncovering/utils/watrain.py).

After every optimizer step, on parameters only: avg = decay * avg + (1 - decay) * raw, with
decay 0 during the warm-up (0.025 * epochs * steps per epoch steps), then
min(tau, (1 + d) / (10 + d)), d = steps since the warm-up ended. BatchNorm buffers are copied
from the raw model at the end of each epoch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, tau: float, warmup_steps: float) -> float:
    """Decay applied at optimizer step `step` (0-based count of steps taken before it)."""
    if step < warmup_steps:
        return 0.0
    d = step - warmup_steps
    return min(tau, (1.0 + d) / (10.0 + d))


class WeightAverage:
    def __init__(self, model: nn.Module, tau: float, warmup_steps: float):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.tau = tau
        self.warmup_steps = warmup_steps

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = ema_decay(step, self.tau, self.warmup_steps)
        for averaged, raw in zip(self.model.parameters(), model.parameters()):
            averaged.mul_(decay).add_(raw.detach(), alpha=1.0 - decay)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        for averaged, raw in zip(self.model.buffers(), model.buffers()):
            averaged.copy_(raw)
