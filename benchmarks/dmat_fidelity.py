"""Two checks against DM-AT's code (wzekai99/DM-Improves-AT), printed as numbers.

    python benchmarks/dmat_fidelity.py
    python benchmarks/dmat_fidelity.py --cell cifar10/wrn-28-10/dm-at+dra/syn1m-bs512-ep400 --steps 1200

1. The EMA decay of every optimizer step of a cell, as the training loop computes it, against
   DM-AT's formula written out from watrain.py: global_step = (epoch - 1) * update_steps +
   update_iter (1-based epoch, update_iter counting the step just taken), update_steps =
   floor(50000 / batch) + 1, warm-up 0.025 * epochs * update_steps, decay 0 below the warm-up and
   min(tau, (1 + d) / (10 + d)) above. Prints the largest difference and how many steps differ,
   for this code and for the count used before (steps taken before the update, warm-up on the
   real number of batches per epoch).
2. PGD-AT's loss on one fixed batch (the first 128 training digits of the mini scale, a seeded
   WRN-10-1 whose BatchNorm running statistics come from one train-mode forward of another
   batch at momentum 1, as DM-AT's first step does): the attack in eval mode with plain
   cross-entropy (DM-AT's adversarial_loss, this code) and in train mode with label smoothing
   0.1 (this code before), and the share of adversarial pixels that differ between the two.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
import yaml

from dra.config import parse_cell, resolve_recipe
from dra.data.digits import digits_uint8
from dra.data.sampler import DMATBatchSampler
from dra.models import create_classifier
from dra.attacks import cross_entropy_objective, frozen_batchnorm_statistics, pgd_linf, uniform_ball_noise
from dra.training.ema import dmat_step_count, dmat_steps_per_epoch, ema_decay
from dra.training.losses import adversarial_examples, pgd_at_outer_loss, smooth_cross_entropy
from dra.training.schedules import set_batchnorm_momentum

ROOT = Path(__file__).resolve().parent.parent


def dmat_decays(tau: float, fraction: float, epochs: int, batch: int, reference: int, batches_per_epoch: int,
                steps: int) -> list[float]:
    """DM-AT's decay at each of the first `steps` updates, from watrain.py's formulas."""
    update_steps = int(np.floor(reference / batch) + 1)
    warmup = fraction * epochs * update_steps
    decays = []
    for epoch in range(1, epochs + 1):
        for update_iter in range(1, batches_per_epoch + 1):
            global_step = (epoch - 1) * update_steps + update_iter
            delta = global_step - warmup
            decay = min(tau, (1.0 + delta) / (10.0 + delta)) if 10.0 + delta != 0 else tau
            decays.append(decay * int(global_step >= warmup))
            if len(decays) == steps:
                return decays
    return decays


def decay_sequences(recipe: dict, steps: int) -> tuple[list[float], list[float], list[float]]:
    """(DM-AT, this code, this code before) decays of the first `steps` updates of `recipe`."""
    data, ema = recipe["data"], recipe["ema"]
    epochs, batch = recipe["epochs"], recipe["batch_size"]
    batches = DMATBatchSampler(1, 0, batch, 0.0, data["epoch_reference_size"], 0).num_batches
    reference = dmat_decays(ema["tau"], ema["warmup_fraction"], epochs, batch, data["epoch_reference_size"], batches,
                            steps)
    dmat_steps = dmat_steps_per_epoch(data["epoch_reference_size"], batch)
    warmup = ema["warmup_fraction"] * epochs * dmat_steps
    ours = [ema_decay(dmat_step_count(k // batches, k % batches, dmat_steps), ema["tau"], warmup)
            for k in range(len(reference))]
    before = [ema_decay(k, ema["tau"], ema["warmup_fraction"] * epochs * batches) for k in range(len(reference))]
    return reference, ours, before


def pgd_at_losses(seed: int = 0, batch: int = 128) -> dict[str, float]:
    images, labels = digits_uint8()
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y_all = torch.from_numpy(labels.astype(np.int64))
    torch.manual_seed(seed)
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 10, [0.5] * 3, [0.25] * 3).train()
    set_batchnorm_momentum(model, 1.0)
    with torch.no_grad():
        model(x_all[batch:2 * batch])
    x, y = x_all[:batch], y_all[:batch]
    eps, step = 32 / 255, 8 / 255   # the mini scale's attack
    noise = uniform_ball_noise(x.shape, eps, torch.Generator().manual_seed(seed))
    eval_mode = adversarial_examples("pgd_at", model, x, y, eps, step, 10, noise)
    with frozen_batchnorm_statistics(model):
        train_mode = pgd_linf(model, x, cross_entropy_objective(y), eps, step, 10, noise)
    with torch.no_grad():
        now = pgd_at_outer_loss(copy.deepcopy(model)(eval_mode), y).item()
        before = smooth_cross_entropy(copy.deepcopy(model)(train_mode), y, 0.1).item()
        train_mode_plain = pgd_at_outer_loss(copy.deepcopy(model)(train_mode), y).item()
    return {"eval-mode attack, plain CE (DM-AT, now)": now,
            "train-mode attack, label smoothing 0.1 (before)": before,
            "train-mode attack, plain CE": train_mode_plain,
            "share of adversarial pixels that differ": (eval_mode != train_mode).float().mean().item()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="cifar10/wrn-28-10/dm-at+dra/syn1m-bs512-ep400")
    parser.add_argument("--steps", type=int, default=1200)
    args = parser.parse_args(argv)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    reference, ours, before = decay_sequences(resolve_recipe(config, parse_cell(args.cell)), args.steps)
    for name, sequence in (("this code", ours), ("before (issue 14)", before)):
        differences = np.abs(np.array(sequence) - np.array(reference))
        print(f"EMA decay, {args.cell}, first {len(reference)} steps, {name}: max |difference| from DM-AT "
              f"{differences.max():.3g}, steps that differ {int((differences > 0).sum())}")
    print("PGD-AT loss on 128 fixed digits, WRN-10-1, eps 32/255, 10 steps of 8/255:")
    for name, value in pgd_at_losses().items():
        print(f"  {name}: {value:.4f}")


if __name__ == "__main__":
    main()
