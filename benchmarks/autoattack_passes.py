"""Forward and backward passes per image of AutoAttack (standard, l_inf), counted on a real run.

    python benchmarks/autoattack_passes.py

The evaluation rule's own function (dra.evaluation.autoattack.evaluate_autoattack, pyautoattack
0.2.0, version standard: APGD-CE, APGD-T, FAB-T, Square) runs on a linear 10-class classifier
whose points are split by the result into three kinds, each then attacked alone while forward and
backward hooks count the image rows the network sees: points it classifies wrongly (AutoAttack
skips them after one clean pass), points an attack breaks, and robust points (every attack runs its
whole budget on them). The robust points' counts fix the worst case per image, which
benchmarks/gpu_hours.py uses (AUTOATTACK_PASSES_PER_ROBUST_IMAGE); the broken points' counts
depend on where they break.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dra.evaluation.autoattack import evaluate_autoattack

NUM_CLASSES = 10   # AutoAttack's targeted attacks take the 9 top other classes, whatever the dataset


def linear_points(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, NUM_CLASSES))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(NUM_CLASSES, 48, generator=generator))
        model[1].bias.zero_()
    images = (0.25 + 0.5 * torch.rand(n, 3, 4, 4, generator=generator)).contiguous()
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:2] = (labels[:2] + 1) % NUM_CLASSES  # two clean-wrong points
    return model.eval(), images, labels


class PassCounter:
    """Image rows through the network: forward (every call) and backward (every input gradient)."""

    def __init__(self, model: nn.Module):
        self.forward = self.backward = 0
        model.register_forward_hook(self._forward)
        model.register_full_backward_hook(self._backward)

    def _forward(self, _module, inputs, _output):
        self.forward += inputs[0].shape[0]

    def _backward(self, _module, _grad_input, grad_output):
        self.backward += grad_output[0].shape[0]


def count(model, images, labels, eps) -> tuple[float, float]:
    counter = PassCounter(model)
    evaluate_autoattack(model, images, labels, eps, 0, 500, None, "cpu")
    return counter.forward / len(images), counter.backward / len(images)


def autoattack_passes(n: int = 40, seed: int = 0, eps: float = 0.02) -> dict[str, tuple[float, float, int]]:
    """{kind: (forward passes per image, backward passes per image, images)} for clean-wrong,
    broken and robust points."""
    model, images, labels = linear_points(n, seed)
    result = evaluate_autoattack(model, images, labels, eps, 0, 500, None, "cpu")
    clean, robust = torch.as_tensor(result.clean), torch.as_tensor(result.robust)
    kinds = {"clean-wrong": ~clean, "broken": clean & ~robust, "robust": robust}
    out = {}
    for kind, mask in kinds.items():
        if mask.any():
            fresh, _, _ = linear_points(n, seed)  # the same weights, no hooks yet
            out[kind] = (*count(fresh, images[mask], labels[mask], eps), int(mask.sum()))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'points':<12}{'images':>7}{'forward/image':>15}{'backward/image':>16}")
    for kind, (forward, backward, images) in autoattack_passes(args.n, args.seed).items():
        print(f"{kind:<12}{images:>7}{forward:>15.1f}{backward:>16.1f}")


if __name__ == "__main__":
    main()
