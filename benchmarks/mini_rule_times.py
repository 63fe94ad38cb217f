"""Wall time per rule of a finished run, from Snakemake's benchmark files.

    python benchmarks/mini_rule_times.py                 # results/mini after README's main command
    python benchmarks/mini_rule_times.py --root results/paper

Every compute rule declares `benchmark:` named <...>.<rule>.benchmark.tsv; Snakemake writes one
TSV per job (s, max_rss, cpu_time, ...).
Prints the jobs grouped by rule with total wall seconds, share of the whole run, CPU seconds (user +
system of the job's processes: on a shared machine wall time grows with the load, CPU time much less)
and peak memory.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

def rule_of(path: Path) -> str:
    # every rule names its benchmark file <...>.<rule>.benchmark.tsv
    return path.name.removesuffix(".benchmark.tsv").rsplit(".", 1)[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="results/mini", help="results folder of one scale")
    args = parser.parse_args(argv)
    seconds, cpu, memory, jobs = defaultdict(float), defaultdict(float), defaultdict(float), defaultdict(int)
    for path in sorted(Path(args.root).rglob("*benchmark*.tsv")):
        with open(path) as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        rule = rule_of(path)
        seconds[rule] += float(row["s"])
        cpu[rule] += float(row["cpu_time"]) if row.get("cpu_time", "NA") != "NA" else 0.0
        memory[rule] = max(memory[rule], float(row["max_rss"]) if row["max_rss"] != "NA" else 0.0)
        jobs[rule] += 1
    if not seconds:
        raise SystemExit(f"no benchmark files under {args.root}: run the workflow first")
    total = sum(seconds.values())
    print(f"{'rule':<26}{'jobs':>5}{'seconds':>10}{'share':>8}{'CPU s':>9}{'peak RSS MB':>13}")
    for rule in sorted(seconds, key=seconds.get, reverse=True):
        print(f"{rule:<26}{jobs[rule]:>5}{seconds[rule]:>10.1f}{seconds[rule] / total:>8.1%}{cpu[rule]:>9.1f}"
              f"{memory[rule]:>13.0f}")
    print(f"{'total (sequential sum)':<26}{sum(jobs.values()):>5}{total:>10.1f}{'':>8}{sum(cpu.values()):>9.1f}")


if __name__ == "__main__":
    main()
