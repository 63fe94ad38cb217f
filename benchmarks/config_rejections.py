"""How many configuration mistakes Snakemake rejects before its first job, naming the key, and how fast.

    python benchmarks/config_rejections.py            # every case of tests/config_cases.py
    python benchmarks/config_rejections.py --limit 5  # the first five (a quick look)

Each mistake of tests/config_cases.py is written as a --configfile overlay (the YAML cases as the
overlay file itself) into a private copy of the workflow, which is dry-run for
results/paper/tables/table2.md. A case counts as rejected before any job when the dry run fails
without building the DAG and its message names the key (the YAML cases: the file name and the
expected words). Prints one line per case, the count, and the time to reject (median and maximum)
against the time of a dry run of the unchanged config (the baseline).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from config_cases import CASES, YAML_CASES, overlay_of  # noqa: E402
from workflow_helpers import copy_workflow, run_snakemake  # noqa: E402

TARGET = "results/paper/tables/table2.md"


def dry_run(workdir: Path, *args: str) -> tuple[bool, str, float]:
    started = time.perf_counter()
    result = run_snakemake(workdir, TARGET, "--dry-run", *args, timeout=300)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    before_any_job = result.returncode != 0 and "Building DAG of jobs" not in output
    return before_any_job, output, seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases of each kind")
    args = parser.parse_args(argv)
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as folder:
        workdir = copy_workflow(Path(folder))
        started = time.perf_counter()
        planned = run_snakemake(workdir, TARGET, "--dry-run", timeout=300).returncode == 0
        baseline = time.perf_counter() - started
        times, rejected, total = [], 0, 0
        for name, path, value, key, shown in CASES[: args.limit]:
            overlay = workdir / "case.yaml"
            overlay.write_text(yaml.safe_dump(overlay_of(path, value, paper)))
            before, output, seconds = dry_run(workdir, "--configfile", overlay.name)
            named = f"config key {key}" in output and shown in output
            total += 1
            rejected += before and named
            times.append(seconds)
            print(f"{'ok  ' if before and named else 'MISS'} {seconds:5.1f} s  {name}")
        for name, text, shown in YAML_CASES[: args.limit]:
            overlay = workdir / "case.yaml"
            overlay.write_text(text)
            before, output, seconds = dry_run(workdir, "--configfile", overlay.name)
            named = "case.yaml" in output and all(part in output for part in shown)
            total += 1
            rejected += before and named
            times.append(seconds)
            print(f"{'ok  ' if before and named else 'MISS'} {seconds:5.1f} s  overlay file: {name}")
    print(f"rejected before any job with the key (or file and line) named: {rejected} of {total}")
    print(f"time to reject: median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
          f"dry run of the unchanged config (baseline, {'planned' if planned else 'FAILED'}): {baseline:.2f} s; "
          f"median ratio {statistics.median(times) / baseline:.2f}")


if __name__ == "__main__":
    main()
