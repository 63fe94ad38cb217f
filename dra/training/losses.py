"""Training objectives: TRADES as DM-AT runs it, PGD-AT as DM-AT runs it, and standard training.

TRADES (DM-AT gowal21uncovering/utils/trades.py):
- attack: uniform start, 10 sign steps maximizing KL_batchmean(p_nat || p_adv) with p_nat
  computed once and detached; model in train mode with BatchNorm tracking off;
- outer loss, from two separate train-mode forwards (each moves the BatchNorm running stats):
  CE_ls(logits_nat, y) + beta * KL_batchmean(softmax(logits_nat) || softmax(logits_adv)),
  softmax(logits_nat) NOT detached;
- label smoothing 0.1 on the clean CE only: 0.9 NLL(y) + 0.1 mean_c(-log p_c).

PGD-AT (Madry et al.) as DM-AT's Trainer.adversarial_loss runs it when no beta is given
(wzekai99/DM-Improves-AT core/utils/train.py, core/utils/context.py):
- attack: uniform start, sign steps maximizing cross-entropy, with the model in EVAL mode
  (BatchNorm uses its running statistics), unlike TRADES' train-mode attack;
- outer loss: plain cross-entropy of one train-mode forward of the adversarial batch; DM-AT
  passes its label smoothing to TRADES only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dra.attacks import (cross_entropy_objective, evaluation_mode, frozen_batchnorm_statistics, pgd_linf,
                         trades_kl_objective)
from dra.registry import OBJECTIVES



def smooth_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """(1 - s) NLL(y) + s * mean over all classes of -log p (DM-AT's SmoothCrossEntropyLoss)."""
    log_probabilities = F.log_softmax(logits.float(), dim=1)
    nll = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
    uniform = -log_probabilities.mean(dim=1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


def trades_outer_loss(logits_natural: torch.Tensor, logits_adversarial: torch.Tensor,
                      labels: torch.Tensor, beta: float, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, robust KL term) of TRADES; gradients flow through both branches."""
    robust = F.kl_div(F.log_softmax(logits_adversarial.float(), dim=1),
                      F.softmax(logits_natural.float(), dim=1), reduction="batchmean")
    return smooth_cross_entropy(logits_natural, labels, label_smoothing) + beta * robust, robust


def pgd_at_outer_loss(logits_adversarial: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the adversarial logits, without label smoothing (DM-AT's adversarial_loss)."""
    return F.cross_entropy(logits_adversarial.float(), labels)


class Objective:
    """A training objective: the inputs of the adversarial branch, and the loss of one micro-batch.

    `clean_branch` (the registration's metadata, which dra.gpu_plan reads without torch: two graphs
    kept until the backward): the outer loss reads the logits of a clean forward too, which
    dra.training.loop runs and counts the accuracy of."""

    clean_branch = False

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
                             steps: int, start_noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def outer_loss(self, logits_clean: torch.Tensor | None, logits_adversarial: torch.Tensor, labels: torch.Tensor,
                   config: dict) -> torch.Tensor:
        raise NotImplementedError


# required: the recipe keys of `objective` it reads beyond name and label_smoothing, with what they hold
@OBJECTIVES.register("trades", clean_branch=True,
                     required={"beta": {"type": "number", "minimum": 0,
                                        "description": "a number >= 0 (TRADES' beta, DM-AT: 5.0)"}})
class Trades(Objective):
    """Attacks KL to the clean prediction in train mode with BatchNorm statistics frozen; the loss is
    smoothed CE of the clean logits plus beta x KL (trades_outer_loss)."""

    def adversarial_examples(self, model, x, y, eps, step_size, steps, start_noise):
        with frozen_batchnorm_statistics(model):
            with torch.no_grad():
                natural_probabilities = F.softmax(model(x).float(), dim=1)
            return pgd_linf(model, x, trades_kl_objective(natural_probabilities), eps, step_size, steps, start_noise)

    def outer_loss(self, logits_clean, logits_adversarial, labels, config):
        return trades_outer_loss(logits_clean, logits_adversarial, labels, config["beta"], config["label_smoothing"])[0]


@OBJECTIVES.register("pgd_at", clean_branch=False)
class PGDAT(Objective):
    """Attacks cross-entropy in eval mode (running statistics); plain CE of the adversarial logits."""

    def adversarial_examples(self, model, x, y, eps, step_size, steps, start_noise):
        with evaluation_mode(model):
            return pgd_linf(model, x, cross_entropy_objective(y), eps, step_size, steps, start_noise)

    def outer_loss(self, logits_clean, logits_adversarial, labels, config):
        return pgd_at_outer_loss(logits_adversarial, labels)


@OBJECTIVES.register("standard", clean_branch=False)
class Standard(Objective):
    """No attack: the 'adversarial' branch is the batch itself, trained with smoothed CE."""

    def adversarial_examples(self, model, x, y, eps, step_size, steps, start_noise):
        return x

    def outer_loss(self, logits_clean, logits_adversarial, labels, config):
        return smooth_cross_entropy(logits_adversarial, labels, config["label_smoothing"])


def objective_of(name: str) -> Objective:
    """The registered objective `name` (objective.name of the recipe), ready to call."""
    objective = OBJECTIVES.get(name)()
    objective.clean_branch = bool(OBJECTIVES.meta(name).get("clean_branch", False))
    return objective


def adversarial_examples(objective: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         eps: float, step_size: float, steps: int, start_noise: torch.Tensor) -> torch.Tensor:
    """The training-time inputs of the adversarial branch for `objective`.

    'trades' attacks KL to the clean prediction in train mode with BatchNorm statistics frozen;
    'pgd_at' attacks cross-entropy in eval mode (running statistics). 'standard' returns x
    itself (no attack).
    """
    return objective_of(objective).adversarial_examples(model, x, y, eps, step_size, steps, start_noise)
