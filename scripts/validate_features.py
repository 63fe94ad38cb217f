"""Validate diffusion features: linear-probe accuracy per (layer, sigma) and PGD robustness of the best probe."""

import argparse

import torch

from dra.diffusion.probe import validate_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="EDM .safetensors (its .json next to it)")
    parser.add_argument("--train", required=True, help="image store the probes are fitted on")
    parser.add_argument("--test", required=True, help="image store the probes are scored on")
    parser.add_argument("--out-dir", required=True, help="writes probe_grid.{csv,png}, robustness.{csv,png}, summary.json")
    parser.add_argument("--sigmas", type=float, nargs="+", required=True)
    parser.add_argument("--layers", nargs="*", help="module names (default: every decoder block)")
    parser.add_argument("--eps", type=float, nargs="*", default=[], help="L-inf budgets in 1/255 units, e.g. 0 1 2 4 8")
    parser.add_argument("--n-train", type=int, help="training images for the probes (default: all)")
    parser.add_argument("--n-test", type=int, help="test images (default: all)")
    parser.add_argument("--n-attack", type=int, default=256, help="test images attacked with PGD")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    validate_features(args.checkpoint, args.train, args.test, args.out_dir, args.sigmas, args.layers,
                      [e / 255 for e in args.eps], n_train=args.n_train, n_test=args.n_test, n_attack=args.n_attack,
                      pgd_steps=args.pgd_steps, batch_size=args.batch_size, seed=args.seed)


if __name__ == "__main__":
    main()
