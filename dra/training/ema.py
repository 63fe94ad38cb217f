"""DM-AT's weight averaging (wzekai99/DM-Improves-AT gowal21uncovering/utils/watrain.py).

After every optimizer step, on parameters only: avg = decay * avg + (1 - decay) * raw, with
decay 0 while the step count is below the warm-up (0.025 * epochs * steps per epoch), then
min(tau, (1 + d) / (10 + d)), d = count - warm-up. BatchNorm buffers are copied from the raw
model at the end of each epoch.

DM-AT counts steps in its own way, and the decay depends on it:
- its "steps per epoch" in these formulas is floor(N / batch) + 1 with N = 50000 (its
  `update_steps`), which is one more than the batches an epoch really has when the batch
  divides N (batch 500: 101 against 100 batches);
- the count handed to the update includes the step just taken (the first update sees 1) and
  is epoch_index * update_steps + batches taken in the epoch, so it skips numbers between
  epochs whenever update_steps exceeds the real number of batches.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def dmat_steps_per_epoch(epoch_reference_size: int, batch_size: int) -> int:
    """DM-AT's `update_steps`: floor(epoch_reference_size / batch_size) + 1."""
    return epoch_reference_size // batch_size + 1


def dmat_step_count(epoch: int, step_in_epoch: int, steps_per_epoch: int) -> int:
    """DM-AT's count at the EMA update after batch `step_in_epoch` of epoch `epoch` (both 0-based);
    `steps_per_epoch` is `dmat_steps_per_epoch`."""
    return epoch * steps_per_epoch + step_in_epoch + 1


def ema_decay(step: int, tau: float, warmup_steps: float) -> float:
    """Decay of the update that DM-AT's count `step` (see `dmat_step_count`) gets."""
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
