"""Classification dimension of one trained cell (paper Table 3, Figure 7).

Writes the JSON Table 3 reads (cls95, cls99, robust_dim, full-model clean/robust accuracy), the
accuracy curve over the number of principal components (CSV) and its plot (PNG).

Example:
    python scripts/classification_dimension.py --model <cell>/train/model.pt --recipe <cell>/recipe.yaml \\
        --test-store resources/cifar10/test --eps 8/255 --steps 20 --step-fraction 0.25 --batch-size 500 \\
        --out-json <cell>/classification_dimension.json --out-csv <cell>/classification_dimension.csv \\
        --out-png <cell>/classification_dimension.png
"""

from __future__ import annotations

import argparse

import torch

from dra.analysis.classification_dimension import run_classification_dimension
from dra.cli import add_device_arguments
from dra.evaluation.autoattack import parse_eps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.pt (state dict)")
    parser.add_argument("--recipe", required=True, help="resolved recipe.yaml of the cell")
    parser.add_argument("--test-store", required=True, help="image store folder of the test split")
    parser.add_argument("--n", type=int, default=None, help="use the first N test points (default: all)")
    parser.add_argument("--eps", required=True, help="PGD Linf budget as a fraction of 1, e.g. 8/255")
    parser.add_argument("--step-fraction", type=float, required=True,
                        help="PGD step as a fraction of eps (config: classification_dimension.attack.step_fraction)")
    parser.add_argument("--steps", type=int, required=True,
                        help="PGD steps (config: classification_dimension.attack.steps)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random start")
    parser.add_argument("--batch-size", type=int, required=True,
                        help="images per batch on the device (the rule passes the GPU plan's, dra.gpu_plan)")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-png", required=True)
    add_device_arguments(parser)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    eps = parse_eps(args.eps)
    step = eps * args.step_fraction
    run_classification_dimension(args.model, args.recipe, args.test_store, args.n, eps, step, args.steps, args.seed,
                                 args.batch_size, args.device, args.out_json, args.out_csv, args.out_png)


if __name__ == "__main__":
    main()
