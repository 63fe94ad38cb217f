"""Figure 3 (Section 4.1): frequency saliency of PGD perturbations and robust accuracy over eps for
the linear-probed diffusion representation (DR), an AT and a standard-trained (ST) model."""

from __future__ import annotations

import argparse

from dra.analysis.figures import figure3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-root", required=True, help="results/<scale>; models are paths below it")
    parser.add_argument("--standard", required=True, help="the ST model, e.g. cifar10/wrn-28-10/st/nosyn-bs128-ep200")
    parser.add_argument("--adversarial", required=True, help="the AT model")
    parser.add_argument("--diffusion", required=True, help="representation.npz of the DR")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    args = parser.parse_args(argv)
    figure3(args.results_root, args.standard, args.adversarial, args.diffusion, args.out_png, args.out_pdf,
            args.out_csv)


if __name__ == "__main__":
    main()
