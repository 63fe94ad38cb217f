"""The linear-probed diffusion representation (DR) for the figures: a linear probe on frozen EDM
features (unconditional mode, diffusion noise fixed per image), attacked with the same PGD as the
classifiers (dra.analysis.figures.diffusion_representation).

Example:
    python -m scripts.figure_diffusion_representation --weights model.safetensors --network model.json \\
        --train-store resources/cifar10/train --test-store resources/cifar10/test --layer model.dec.8x8_in1 \\
        --sigma 0.1 --train-n 10000 --n 1000 --eps-255 0 1 2 4 8 --attack-eps-255 8 \\
        --steps 20 --step-factor 2.5 --batch-size 128 --out dr.npz
"""

from __future__ import annotations

import argparse

import torch

from dra.analysis.figures import diffusion_representation
from dra.cli import add_device_arguments, add_edm_arguments, add_robust_curve_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edm_arguments(parser)
    parser.add_argument("--train-store", required=True, help="image store the probe is fitted on")
    parser.add_argument("--test-store", required=True, help="image store of the test split")
    parser.add_argument("--layer", required=True, help="EDM module whose pooled output is the representation")
    parser.add_argument("--sigma", type=float, required=True, help="diffusion noise level")
    parser.add_argument("--train-n", type=int, required=True, help="first N training images fit the probe")
    add_robust_curve_arguments(parser)
    parser.add_argument("--batch-size", type=int, required=True,
                        help="images per batch on the device (the rule passes the GPU plan's, dra.gpu_plan)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion noise and the probe")
    parser.add_argument("--out", required=True, help="representation.npz")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    diffusion_representation(args.weights, args.network, args.train_store, args.test_store, args.layer, args.sigma,
                             args.train_n, args.n, [e / 255 for e in args.eps_255], args.attack_eps_255 / 255,
                             args.steps, args.step_factor, args.batch_size, args.seed, args.device, args.out)


if __name__ == "__main__":
    main()
