"""Validate diffusion features: linear-probe accuracy per (layer, sigma) and PGD robustness of the best probe."""

import argparse

import torch

from dra.cli import add_edm_arguments
from dra.diffusion.probe import validate_features


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_edm_arguments(parser)
    parser.add_argument("--train-store", required=True, help="image store the probes are fitted on")
    parser.add_argument("--test-store", required=True, help="image store the probes are scored on")
    parser.add_argument("--sigmas", type=float, nargs="+", required=True)
    parser.add_argument("--layers", nargs="*", help="module names (default: every decoder block)")
    parser.add_argument("--eps-255", type=float, nargs="+", required=True, help="L-inf budgets, x/255")
    parser.add_argument("--train-n", type=int, help="training images for the probes (default: all)")
    parser.add_argument("--test-n", type=int, help="test images (default: all)")
    parser.add_argument("--attack-n", type=int, required=True, help="test images attacked with PGD")
    parser.add_argument("--pgd-steps", type=int, required=True, help="PGD sign steps")
    parser.add_argument("--pgd-step-factor", type=float, required=True, help="each step is factor * eps / steps")
    parser.add_argument("--batch-size", type=int, required=True,
                        help="images per batch on the device (the rule passes the GPU plan's, dra.gpu_plan)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-probe", required=True, help="probe accuracy per (layer, sigma), .csv")
    parser.add_argument("--out-probe-png", required=True, help="heatmap of the probe accuracy")
    parser.add_argument("--out-robustness", required=True, help="robust accuracy per eps, .csv")
    parser.add_argument("--out-robustness-png", required=True, help="plot of the robust accuracy")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    validate_features(args.weights, args.network, args.train_store, args.test_store, args.out_probe,
                      args.out_probe_png, args.out_robustness, args.out_robustness_png, args.sigmas, args.layers,
                      [e / 255 for e in args.eps_255], pgd_steps=args.pgd_steps, pgd_step_factor=args.pgd_step_factor,
                      n_attack=args.attack_n, n_train=args.train_n, n_test=args.test_n, batch_size=args.batch_size,
                      seed=args.seed)


if __name__ == "__main__":
    main()
