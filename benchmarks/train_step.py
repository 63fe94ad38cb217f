"""CPU time of one training step, side by side with ratios.

1. DRA overhead: DM-AT (TRADES-10) vs DM-AT+DRA with stored targets (goal <= 1.05x) and with
   online targets from a small EDM U-Net (the cost the stored features avoid).
2. Our TRADES step vs a straightforward TRADES-repo-style step (eval-mode attack from
   0.001*randn, model.eval()/train() toggling, KLDivLoss(sum)/B, per-step python loop).

    python benchmarks/train_step.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from dra.models import create_classifier
from dra.attacks import uniform_ball_noise
from dra.training.dra_head import OnlineTargets, ProjectionHead, StoredTargets, dra_loss
from dra.training.ema import WeightAverage
from dra.training.loop import TrainingModule
from dra.training.losses import adversarial_examples, smooth_cross_entropy, trades_outer_loss
from dra.training.schedules import build_optimizer

EPS, STEP, STEPS, BETA = 8 / 255, 2 / 255, 10, 5.0
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def make_step(variant: str, arch: dict, batch: int, size: int):
    torch.manual_seed(0)
    classifier = create_classifier(arch, 10, [0.5] * 3, [0.25] * 3)
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    generator = torch.Generator().manual_seed(0)
    targets, head = None, None
    if variant == "dra_stored":
        features = np.random.default_rng(0).standard_normal((4096, 2, 256)).astype(np.float16)
        targets = StoredTargets(features, features)
    elif variant == "dra_online":
        from dra.diffusion.edm import EDMPrecond
        from dra.diffusion.features import DiffusionFeatureExtractor

        net = EDMPrecond(img_resolution=size, img_channels=3, label_dim=10, model_channels=32, channel_mult=[1, 2, 2],
                         num_blocks=2, attn_resolutions=[16]).eval().requires_grad_(False)
        targets = OnlineTargets(DiffusionFeatureExtractor(net, "model.dec.8x8_in1", 0.1), views=1)
    if targets is not None:
        probe = targets(np.arange(1), np.zeros(1, bool), np.zeros(1, np.int64), x[:1], y[:1])
        head = ProjectionHead(classifier.feature_dim, 2048, probe.shape[1])
    module = TrainingModule(classifier, head)
    optimizer = build_optimizer(SGD, module)
    ema = WeightAverage(classifier, 0.995, 0)
    if variant == "trades_repo_style":
        return lambda: trades_repo_style_step(classifier, optimizer, x, y)

    def step():
        noise = uniform_ball_noise(x.shape, EPS, generator)
        x_adv = adversarial_examples("trades", classifier, x, y, EPS, STEP, STEPS, noise)
        logits_clean, logits_adv, projected = module(x, x_adv)
        loss, _ = trades_outer_loss(logits_clean, logits_adv, y, BETA, 0.1)
        if head is not None:
            index = np.random.default_rng(0).integers(0, 4096, len(y))
            target = targets(index, index % 2 == 0, index % 2, x, y)
            loss = loss + 1.2 * dra_loss(projected, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(classifier, 10_000)
    return step


def trades_repo_style_step(model, optimizer, x, y):
    """The straightforward form of the same step, as the original TRADES code writes it."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape)
    p_natural = F.softmax(model(x), dim=1).detach()
    for _ in range(STEPS):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_natural, reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    logits = model(x)
    loss = smooth_cross_entropy(logits, y, 0.1) + BETA * F.kl_div(
        F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="sum") / len(x)
    loss.backward()
    optimizer.step()


def time_steps(steps: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each repeat, variants interleaved so machine load affects all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arch = {"family": "wrn", "depth": args.depth, "width": args.width, "activation": "silu"}
    variants = ["dmat", "dra_stored", "trades_repo_style"]
    try:
        import dra.diffusion.features  # noqa: F401

        variants.append("dra_online")
    except ImportError:
        pass
    steps = {name: make_step(name, arch, args.batch_size, 32) for name in variants}
    times = time_steps(steps, args.repeats, args.warmup)
    # The minimum is the least disturbed by other processes on a shared machine; the median is shown too.
    fastest = {name: min(t) for name, t in times.items()}
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(f"WRN-{args.depth}-{args.width}, batch {args.batch_size}, 32x32, TRADES-{STEPS}, CPU threads {args.threads}, "
          f"{args.repeats} interleaved repeats")
    print(f"{'variant':<20}{'min ms':>10}{'median ms':>11}{'ratio(min)':>12}{'ratio(med)':>12}  baseline")
    rows = [("dmat", "dmat"), ("dra_stored", "dmat"), ("dra_online", "dmat"), ("dmat", "trades_repo_style"),
            ("trades_repo_style", "trades_repo_style")]
    for name, baseline in rows:
        if name in times:
            print(f"{name:<20}{1000 * fastest[name]:>10.1f}{1000 * median[name]:>11.1f}"
                  f"{fastest[name] / fastest[baseline]:>12.3f}{median[name] / median[baseline]:>12.3f}  {baseline}")


if __name__ == "__main__":
    main()
