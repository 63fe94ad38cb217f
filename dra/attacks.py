"""L-inf PGD as DM-AT runs it (DM-AT gowal21uncovering/utils/trades.py, watrain.py).

The attack starts uniformly in the eps-ball, takes sign-of-gradient steps, and projects onto
the ball and onto [0, 1] after every step. The objective (what the attack maximizes) is a
function of the logits: cross-entropy for PGD-AT, TRADES' KL for TRADES, the CW margin for the
40-step validation attack.

DM-AT's TRADES attack keeps the model in train mode but switches BatchNorm's running-statistic
tracking off, so the attack uses batch statistics without moving the running averages
(`frozen_batchnorm_statistics`); its PGD-AT attack and its validation attack run the model in
eval mode (`evaluation_mode`).

Shared by the layers above it: training (the outer losses and the per-epoch validation), the
diffusion probe's robustness and the classification dimension's attack.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Objective = Callable[[torch.Tensor], torch.Tensor]  # logits -> scalar to maximize

# DM-AT's validation attack uses CWLoss with its default confidence 0 (wzekai99/DM-Improves-AT,
# core/attacks/utils.py CWLoss, built in gowal21uncovering/utils/watrain.py): an example that is
# already misclassified gives no gradient, so its iterate stays where it is.
CW_MARGIN = 0.0


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch statistics are used but running mean/var and num_batches_tracked stay unchanged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    previous = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, tracked in zip(norms, previous):
            m.track_running_stats = tracked


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode; each one's own train/eval flag is restored afterwards."""
    previous = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in previous:
            m.training = training


def uniform_ball_noise(shape: torch.Size | tuple[int, ...], eps: float, generator: torch.Generator,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform(-eps, eps) start noise, drawn from `generator` (on its device) and moved to `device`."""
    noise = torch.rand(shape, generator=generator, device=generator.device)
    return ((2.0 * noise - 1.0) * eps).to(device)


def pgd_linf(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, objective: Objective,
             eps: float, step_size: float, steps: int, start_noise: torch.Tensor) -> torch.Tensor:
    """Return x_adv with ||x_adv - x||_inf <= eps and x_adv in [0, 1], detached.

    `start_noise` is the uniform start (see `uniform_ball_noise`); the caller draws it so that a
    run split over several processes uses the same noise as one process.
    """
    x = x.detach()
    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    x_adv = torch.clamp(x + start_noise, 0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = objective(model(x_adv))
            (gradient,) = torch.autograd.grad(loss, x_adv)
        # Projection onto the ball and [0, 1] at once: the intersection of two boxes.
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * gradient.sign(), lower), upper)
    return x_adv.detach()


def cross_entropy_objective(labels: torch.Tensor) -> Objective:
    return lambda logits: F.cross_entropy(logits.float(), labels, reduction="sum")


def trades_kl_objective(natural_probabilities: torch.Tensor) -> Objective:
    """KL(p_nat || p_adv) with batchmean reduction; p_nat is fixed (detached) during the attack."""
    target = natural_probabilities.detach()
    return lambda logits: F.kl_div(F.log_softmax(logits.float(), dim=1), target, reduction="batchmean")


def cw_margin_objective(labels: torch.Tensor, margin: float = CW_MARGIN) -> Objective:
    """Sum over the batch of -max(z_y - max_{j != y} z_j + margin, 0)."""
    def objective(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        true_logit = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return -torch.clamp(true_logit - others.max(dim=1).values + margin, min=0.0).sum()
    return objective


@torch.no_grad()
def robust_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, start_noise: torch.Tensor,
                   eps: float, step_size: float, steps: int, chunk: int) -> torch.Tensor:
    """[clean correct, PGD-`steps` CW-margin robust correct] (int64, on the images' device) of
    `model` in eval mode, attacking `chunk` images at a time from the uniform start `start_noise`.

    DM-AT's per-epoch validation: 40 steps, CW margin loss with margin 0, uniform start
    (DM-AT gowal21uncovering/utils/watrain.py, core/attacks/utils.py). Eval mode normalises each
    image by itself, so the chunk size changes memory, not the counts.
    """
    counts = torch.zeros(2, dtype=torch.int64, device=images.device)
    with evaluation_mode(model):
        for start in range(0, len(images), chunk):
            x, y = images[start:start + chunk], labels[start:start + chunk]
            counts[0] += (model(x).argmax(1) == y).sum()
            x_adv = pgd_linf(model, x, cw_margin_objective(y), eps, step_size, steps, start_noise[start:start + chunk])
            counts[1] += (model(x_adv).argmax(1) == y).sum()
    return counts


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                    step_size: float, steps: int, batch_size: int,
                    generator: torch.Generator) -> tuple[float, float]:
    """(clean accuracy, robust accuracy) of `robust_correct` in one process, the start noise of all
    images drawn at once from `generator`."""
    noise = uniform_ball_noise(images.shape, eps, generator, images.device)
    clean, robust = robust_correct(model, images, labels, noise, eps, step_size, steps, batch_size).tolist()
    return clean / len(images), robust / len(images)
