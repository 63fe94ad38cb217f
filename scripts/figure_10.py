"""Figure 10 (Appendix E): input-gradient frequency difference maps, aligned cell minus baseline,
zero frequency in the upper-left."""

from __future__ import annotations

import argparse

from dra.analysis.figures import figure10


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-root", required=True, help="results/<scale>; cells are paths below it")
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("ALIGNED", "BASELINE"),
                        help="one difference map; repeat for more panels")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-pdf", required=True)
    parser.add_argument("--out-csv", required=True)
    args = parser.parse_args(argv)
    figure10(args.results_root, [tuple(pair) for pair in args.pair], args.out_png, args.out_pdf, args.out_csv)


if __name__ == "__main__":
    main()
