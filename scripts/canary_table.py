"""The canary's table: one row per cell (pass or fail, step time, peak memory, memory per image).

    python -m scripts.canary_table --cells results/canary/*/*/*/*/canary.json \
        --out-csv results/canary/canary.csv --out-md results/canary/canary.md \
        [--memory-table config/data/memory_per_image.csv --measured 2026-12-01]

With --memory-table, the passed cells' measurements replace their rows of the GPU plan's
per-image memory table (dra.gpu_plan), and a GPU run's step times become its GPU seconds per image.
"""

import argparse
import json
from pathlib import Path

from dra.canary import update_memory_table, write_canary_table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", required=True, help="canary.json of each cell")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--memory-table", default=None, help="rewrite this per-image memory table (config hardware)")
    parser.add_argument("--measured", default="", help="date or note recorded with the rewritten rows")
    args = parser.parse_args(argv)
    rows = [json.loads(Path(path).read_text()) for path in args.cells]
    write_canary_table(rows, args.out_csv, args.out_md)
    if args.memory_table:
        replaced = update_memory_table(rows, args.memory_table, args.measured)
        print(f"{args.memory_table}: {replaced} rows from the canary")


if __name__ == "__main__":
    main()
