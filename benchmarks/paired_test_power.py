"""The smallest difference in AutoAttack accuracy a paired test detects, against the paper's gains.

    python benchmarks/paired_test_power.py
    python benchmarks/paired_test_power.py \
        --flags results/mini-replicates/digits/wrn-10-1/at/nosyn-bs128-ep30/autoattack.npz \
        results/mini-replicates/digits/wrn-10-1/at+dra/nosyn-bs128-ep30/autoattack.npz

The test is McNemar's exact test (two-sided) on the per-example flags of two models evaluated on the
same n test images, as the tables use (dra.analysis.significance). Its power depends on the share of
discordant images (those that exactly one of the two models gets right), which the paper does not
report: the script prints the smallest detectable difference for a range of assumed shares, at
level --alpha and power --power, with the discordant count at its expectation n x share. --flags
measures the share from two autoattack.npz files. Then every "+DRA" row of config.yaml's tables with
its baseline row: the paper's gain in AutoAttack accuracy and the shares at which it is detectable.
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from dra.analysis.significance import min_detectable_difference, normal_min_detectable_difference
from dra.analysis.tables import DRA_METHOD
from dra.config import parse_cell

ROOT = Path(__file__).resolve().parent.parent
smallest = lru_cache(maxsize=None)(min_detectable_difference)


def discordant_share(baseline_npz: str, treated_npz: str) -> float:
    with np.load(baseline_npz) as base, np.load(treated_npz) as treated:
        if not np.array_equal(base["indices"], treated["indices"]):
            raise SystemExit(f"{baseline_npz} and {treated_npz} hold different test images")
        return float((base["robust"] != treated["robust"]).mean())


def paper_gains(config: dict) -> list[tuple[str, str, float, int]]:
    """(table, +DRA cell, paper gain in AutoAttack points, test images) of each +DRA row."""
    gains, seen = [], set()
    for name, table in config["tables"].items():
        rows = {row["cell"]: row for row in table["rows"]
                if "cell" in row and row["paper"] and "autoattack" in row["paper"]}
        for cell_id, row in rows.items():
            cell = parse_cell(cell_id)
            match = DRA_METHOD.match(cell.method)
            base_id = f"{cell.dataset}/{cell.arch}/{match['base']}/{cell.budget}" if match else None
            if base_id in rows and row["paper"]["autoattack"] is not None and cell_id not in seen:
                seen.add(cell_id)
                gain = row["paper"]["autoattack"] - rows[base_id]["paper"]["autoattack"]
                gains.append((name, cell_id, gain, config["datasets"][cell.dataset]["eval_n"]))
    return gains


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="paired test images (CIFAR's test set)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.04, 0.06, 0.08, 0.10, 0.15],
                        help="assumed shares of discordant images")
    parser.add_argument("--flags", nargs=2, metavar=("BASELINE_NPZ", "TREATED_NPZ"),
                        help="measure the discordant share from two autoattack.npz files")
    args = parser.parse_args(argv)
    shares = list(args.shares)
    if args.flags:
        measured = discordant_share(*args.flags)
        print(f"measured discordant share: {measured:.4f} ({args.flags[0]} vs {args.flags[1]})")
        shares.append(measured)
    print(f"exact McNemar, two-sided, alpha = {args.alpha}, power = {args.power}, n = {args.n} paired images")
    print(f"{'discordant share':>17} {'discordant images':>18} {'smallest difference (exact)':>28} "
          f"{'(normal approx.)':>17}")
    for share in shares:
        exact = smallest(args.n, share, args.alpha, args.power)
        normal = normal_min_detectable_difference(args.n, share, args.alpha, args.power)
        print(f"{share:17.3f} {round(args.n * share):18d} {100 * exact:25.2f} pp {100 * normal:14.2f} pp")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    print("\nthe paper's DRA gains (AutoAttack points, one run each) and the assumed shares at which a difference "
          "that size would be detected")
    for table, cell_id, gain, n in paper_gains(config):
        detectable = [share for share in args.shares
                      if 100 * smallest(n, share, args.alpha, args.power) <= abs(gain)]
        print(f"{table:8} {cell_id:50} {gain:+.2f} on {n:5d} images; detectable at shares: "
              f"{', '.join(f'{s:.2f}' for s in detectable) or 'none of those assumed'}")


if __name__ == "__main__":
    main()
