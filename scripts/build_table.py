"""Build one results table (paper, ours, difference) as CSV, Markdown and LaTeX.

Example:
    python scripts/build_table.py --spec config.yaml --key tables.table1 --kind accuracy \\
        --results-root results/paper --out-csv results/paper/tables/table1.csv \\
        --out-md results/paper/tables/table1.md --out-tex results/paper/tables/table1.tex
"""

from __future__ import annotations

import argparse

from dra.analysis.tables import build_and_write_table
from dra.registry import TABLE_KINDS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="YAML/JSON file holding the table rows")
    parser.add_argument("--key", default=None,
                        help="dotted key of the row list inside --spec (e.g. tables.table1); "
                        "omit if the file is the list")
    parser.add_argument("--kind", required=True, choices=TABLE_KINDS.names(),
                        help="accuracy (Tables 1, 2: autoattack.json) or classification_dimension (Table 3)")
    parser.add_argument("--results-root", required=True, help="folder holding <dataset>/<arch>/<method>/<budget>/")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-tex", required=True)
    args = parser.parse_args(argv)
    build_and_write_table(args.spec, args.key, args.results_root, args.kind, args.out_csv, args.out_md, args.out_tex)


if __name__ == "__main__":
    main()
