"""Optimizers and learning-rate schedules of the two recipes.

WRN (DM-AT watrain.py, core/utils/train.py): SGD Nesterov, weight decay 5e-4 except on parameters
whose name contains 'batchnorm'; 'cosinew' = OneCycleLR(max_lr=lr, pct_start=0.025,
total_steps=epochs) stepped once per EPOCH, which also cycles SGD's momentum 0.95 -> 0.85 -> 0.95.
ViT (paper Appendix B, Wu et al. 2025): Lion (timm.optim) with a per-step cosine schedule after
a linear warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from dra.models.wideresnet import BATCHNORM_MOMENTUM
from dra.registry import OPTIMIZERS, SCHEDULES


# required: the optimizer keys it reads beyond name, lr and weight_decay, with what they hold
@OPTIMIZERS.register("sgd", required={
    "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "a number in [0, 1)"},
    "nesterov": {"type": "boolean", "description": "true or false"}})
def build_sgd(config: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """DM-AT's SGD: Nesterov momentum, no weight decay on parameters named 'batchnorm'."""
    no_decay = [p for n, p in model.named_parameters() if "batchnorm" in n]
    decay = [p for n, p in model.named_parameters() if "batchnorm" not in n]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config["lr"], momentum=config.get("momentum", 0.9), nesterov=config.get("nesterov", True))


@OPTIMIZERS.register("lion", required={
    "betas": {"type": "array", "minItems": 2, "maxItems": 2,
              "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
              "description": "a list of 2 numbers in [0, 1)"}})
def build_lion(config: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    # timm exempts biases and normalization weights (1-D parameters) from weight decay.
    return create_optimizer_v2(model, opt="lion", lr=config["lr"], weight_decay=config["weight_decay"],
                               betas=tuple(config.get("betas", (0.9, 0.99))))


def build_optimizer(config: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """The registered optimizer config["name"] (dra.registry.OPTIMIZERS)."""
    return OPTIMIZERS.get(config["name"])(config, model)


class WarmupCosine:
    """Multiplier of the base lr at a step: linear warm-up from 0, then cosine decay to 0."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Schedule:
    """An lr scheduler and when the loop steps it: after every 'step' or after every 'epoch'."""

    scheduler: LRScheduler
    per: str


@SCHEDULES.register("dmat_onecycle")
def build_dmat_onecycle(config: dict[str, Any], optimizer: torch.optim.Optimizer, max_lr: float, epochs: int,
                        steps_per_epoch: int) -> Schedule:
    """DM-AT's 'cosinew': OneCycleLR over the epochs, stepped once per epoch."""
    return Schedule(OneCycleLR(optimizer, max_lr=max_lr, pct_start=config.get("warmup_fraction", 0.025),
                               total_steps=epochs), per="epoch")


@SCHEDULES.register("cosine")
def build_cosine(config: dict[str, Any], optimizer: torch.optim.Optimizer, max_lr: float, epochs: int,
                 steps_per_epoch: int) -> Schedule:
    """Linear warm-up, then cosine decay to 0, stepped per optimizer step."""
    total = epochs * steps_per_epoch
    warmup = max(1, round(config.get("warmup_fraction", 0.025) * total))
    return Schedule(LambdaLR(optimizer, WarmupCosine(total, warmup)), per="step")


def build_schedule(config: dict[str, Any], optimizer: torch.optim.Optimizer, max_lr: float,
                   epochs: int, steps_per_epoch: int) -> Schedule:
    """The registered schedule config["name"] (dra.registry.SCHEDULES)."""
    return SCHEDULES.get(config["name"])(config, optimizer, max_lr, epochs, steps_per_epoch)


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> None:
    """DM-AT sets 1.0 for the very first step (the first batch replaces the initial statistics)
    and 0.01 afterwards (DM-AT watrain.py)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


FIRST_STEP_BATCHNORM_MOMENTUM = 1.0
TRAINING_BATCHNORM_MOMENTUM = BATCHNORM_MOMENTUM
