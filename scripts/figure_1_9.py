"""Figures 1 and 9 (Appendix A): CKNNA of RobustBench's CIFAR-10 l_inf models with the diffusion
representation (and, in Figure 9, with RobustBench's standard-trained model) against the AutoAttack
accuracy RobustBench reports; our own cells as a second series (dra.analysis.figures.figure1_9)."""

from __future__ import annotations

import argparse

import torch

from dra.analysis.figures import figure1_9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoo", nargs=3, action="append", required=True, metavar=("NAME", "NPZ", "AUTOATTACK"),
                        help="a RobustBench model: its name, its features npz, its reported AutoAttack accuracy (%%)")
    parser.add_argument("--standard", required=True, help="features npz of RobustBench's Standard model")
    parser.add_argument("--diffusion", required=True, help="representation.npz of the DR")
    parser.add_argument("--topk", type=int, required=True, help="CKNNA neighbourhood size (config: figures.cknna_topk)")
    parser.add_argument("--results-root", default=None, help="results/<scale>; --cells are paths below it")
    parser.add_argument("--cells", nargs="*", default=[], help="our cells, drawn as a second series")
    parser.add_argument("--out-png", required=True, help="Figure 1")
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out9-png", required=True, help="Figure 9")
    parser.add_argument("--out9-pdf", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.cells and args.results_root is None:
        parser.error("--cells needs --results-root")
    torch.set_num_threads(args.threads)
    zoo = [(name, npz, float(accuracy)) for name, npz, accuracy in args.zoo]
    figure1_9(zoo, args.standard, args.diffusion, args.topk, args.out_png, args.out_pdf, args.out_csv,
              args.out9_png, args.out9_pdf, args.results_root, args.cells)


if __name__ == "__main__":
    main()
