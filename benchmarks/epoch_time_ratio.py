"""Training time per epoch of one cell against a baseline cell, from their log.csv files.

Section 5.6 reports that fine-tuning the diffusion encoder end to end takes 1.35x the training
time per epoch of WRN-34-10 AT+DRA. Time per epoch is epoch_reference_size / images_per_second,
and both cells see the same number of images per epoch, so the ratio is the inverse ratio of their
mean training throughput (log.csv's images_per_second, the first epoch left out as warm-up when
there are more). Run both cells on the same machine.

    python benchmarks/epoch_time_ratio.py \\
        --cell results/paper/cifar10/edm-encoder/at/nosyn-bs128-ep200 \\
        --baseline results/paper/cifar10/wrn-34-10/at+dra/nosyn-bs128-ep200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def mean_images_per_second(cell: Path) -> float:
    path = cell / "train" / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the cell first (snakemake {cell}/train/model.pt)")
    rates = pd.read_csv(path)["images_per_second"]
    return float((rates.iloc[1:] if len(rates) > 1 else rates).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", type=Path, required=True, help="results folder of the cell measured")
    parser.add_argument("--baseline", type=Path, required=True, help="results folder of the baseline cell")
    args = parser.parse_args(argv)
    cell, baseline = mean_images_per_second(args.cell), mean_images_per_second(args.baseline)
    print(f"{'cell':<12}{'images/s':>12}  path")
    print(f"{'measured':<12}{cell:>12.1f}  {args.cell}")
    print(f"{'baseline':<12}{baseline:>12.1f}  {args.baseline}")
    print(f"time per epoch, measured / baseline: {baseline / cell:.2f}x (paper, encoder vs WRN-34-10 AT+DRA: 1.35x)")


if __name__ == "__main__":
    main()
