"""One classifier's test-set representation for the figures: clean and PGD-adversarial pooled
features, robust accuracy over an eps grid, Fourier magnitudes of the perturbations and input
gradients (dra.analysis.figures.classifier_representation).

Example:
    python -m scripts.figure_representation --model <cell>/train/model.pt --recipe <cell>/recipe.yaml \\
        --test-store resources/cifar10/test --n 1000 --eps-255 0 1 2 4 8 --attack-eps-255 8 --steps 20 \\
        --step-factor 2.5 --batch-size 250 --out <cell>/representation.npz
"""

from __future__ import annotations

import argparse

import torch

from dra.analysis.figures import classifier_representation
from dra.cli import add_device_arguments, add_robust_curve_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.pt (state dict)")
    parser.add_argument("--recipe", required=True, help="resolved recipe.yaml of the model")
    parser.add_argument("--test-store", required=True, help="image store folder of the test split")
    add_robust_curve_arguments(parser)
    parser.add_argument("--batch-size", type=int, required=True,
                        help="images per batch on the device (the rule passes the GPU plan's, dra.gpu_plan)")
    parser.add_argument("--out", required=True, help="representation.npz")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    classifier_representation(args.model, args.recipe, args.test_store, args.n, [e / 255 for e in args.eps_255],
                              args.attack_eps_255 / 255, args.steps, args.step_factor, args.batch_size, args.device,
                              args.out)


if __name__ == "__main__":
    main()
