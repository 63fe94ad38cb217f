"""Figures 1 and 9 (Appendix A): CKNNA of classifier representations with the diffusion
representation (and, in Figure 9, with a standard-trained model's) against robust accuracy."""

from __future__ import annotations

import argparse

import torch

from dra.analysis.figures import figure1_9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-root", required=True, help="results/<scale>; models are paths below it")
    parser.add_argument("--models", nargs="+", required=True, help="model paths below --results-root")
    parser.add_argument("--standard", required=True, help="the standard-trained model of Figure 9")
    parser.add_argument("--diffusion", required=True, help="representation.npz of the DR")
    parser.add_argument("--topk", type=int, default=10, help="CKNNA neighbourhood size")
    parser.add_argument("--out-png", required=True, help="Figure 1")
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out9-png", required=True, help="Figure 9")
    parser.add_argument("--out9-pdf", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    figure1_9(args.results_root, args.models, args.standard, args.diffusion, args.topk, args.out_png, args.out_pdf,
              args.out_csv, args.out9_png, args.out9_pdf)


if __name__ == "__main__":
    main()
