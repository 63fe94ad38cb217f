"""Figures 4 and 5: alignment of (clean, adversarial) pairs and uniformity of L2-normalised
features; Figure 4 adds the diffusion representation, Figure 5 the clean/robust accuracy."""

from __future__ import annotations

import argparse

from dra.analysis.figures import figure_alignment_uniformity


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-root", required=True, help="results/<scale>; models are paths below it")
    parser.add_argument("--models", nargs="+", required=True, help="model paths below --results-root")
    parser.add_argument("--diffusion", help="representation.npz of the DR, drawn as one more point")
    parser.add_argument("--with-accuracy", action="store_true", help="label models with <model>/autoattack.json")
    parser.add_argument("--title", default="")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    args = parser.parse_args(argv)
    figure_alignment_uniformity(args.results_root, args.models, args.diffusion, args.with_accuracy, args.title,
                                args.out_png, args.out_pdf, args.out_csv)


if __name__ == "__main__":
    main()
