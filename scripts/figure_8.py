"""Figure 8 (Section 5.6): clean and AutoAttack accuracy of DM-AT+DRA against the DRA strength
lambda (read from each cell's recipe.yaml), with the baseline without DRA. A cell given as
comma-separated replicate paths (the same cell trained with several seeds) is drawn as its mean
with the standard deviation over seeds as an error bar."""

from __future__ import annotations

import argparse

from dra.analysis.figures import figure8


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-root", required=True, help="results/<scale>; cells are paths below it")
    parser.add_argument("--baseline", required=True, help="the cell without DRA (its replicates comma-separated)")
    parser.add_argument("--models", nargs="+", required=True,
                        help="DRA cells, one per lambda (each: its replicates comma-separated)")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    args = parser.parse_args(argv)
    figure8(args.results_root, args.baseline.split(","), [model.split(",") for model in args.models],
            args.out_png, args.out_pdf, args.out_csv)


if __name__ == "__main__":
    main()
