"""Figure 6 (Section 5.4): normalized reconstruction loss of TopK SAEs trained on classifier
representations, per sparsity K and model."""

from __future__ import annotations

import argparse

import torch

from dra.analysis.figures import figure6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-root", required=True, help="results/<scale>; models are paths below it")
    parser.add_argument("--models", nargs="+", required=True, help="model paths below --results-root")
    parser.add_argument("--k", type=int, nargs="+", required=True, help="SAE sparsities")
    parser.add_argument("--latents-per-dim", type=int, required=True, help="SAE width as a multiple of the feature dim")
    parser.add_argument("--steps", type=int, required=True, help="SAE training steps")
    parser.add_argument("--batch-size", type=int, required=True, help="SAE batch size")
    parser.add_argument("--lr", type=float, required=True, help="SAE Adam learning rate (config: figures.figure6_sae)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    figure6(args.results_root, args.models, args.k, args.latents_per_dim, args.steps, args.batch_size, args.lr,
            args.seed, args.out_png, args.out_pdf, args.out_csv)


if __name__ == "__main__":
    main()
