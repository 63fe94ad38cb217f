"""How many configuration mistakes Snakemake rejects before its first job, naming the key, and how fast.

    python benchmarks/config_rejections.py            # every case of tests/config_cases.py
    python benchmarks/config_rejections.py --limit 5  # the first five (a quick look)

Each mistake of tests/config_cases.py is made in config.yaml of a private copy of the workflow
(an overlay cannot delete a key), which is dry-run for results/paper/tables/table2.md; each YAML
case is tried twice, as config.yaml itself and as a --configfile overlay (which Snakemake reads
before the workflow starts). A case counts as rejected before any job when the dry run fails
without building the DAG and its message names the key (the YAML cases: the file name and the
expected words). Prints one line per case, the count, and the time to reject (median and maximum)
against the time of a dry run of the unchanged config (the baseline).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from config_cases import CASES, YAML_CASES, apply  # noqa: E402
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
        original = (workdir / "config.yaml").read_text()
        times, counts = [], {}

        def record(kind, name, before, named, seconds):
            done, total = counts.get(kind, (0, 0))
            counts[kind] = (done + (before and named), total + 1)
            times.append(seconds)
            print(f"{'ok  ' if before and named else 'MISS'} {seconds:5.1f} s  {kind}: {name}")

        for name, path, value, key, shown in CASES[: args.limit]:
            config = copy.deepcopy(paper)
            apply(config, path, value)
            (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            before, output, seconds = dry_run(workdir)
            record("config.yaml", name, before, f"config key {key}" in output and shown in output, seconds)
        for name, text, shown in YAML_CASES[: args.limit]:
            (workdir / "config.yaml").write_text(text)
            before, output, seconds = dry_run(workdir)
            named = "config.yaml" in output and all(part in output for part in shown)
            record("config.yaml file", name, before, named, seconds)
        (workdir / "config.yaml").write_text(original)
        for name, text, shown in YAML_CASES[: args.limit]:
            (workdir / "case.yaml").write_text(text)
            before, output, seconds = dry_run(workdir, "--configfile", "case.yaml")
            named = "case.yaml" in output and all(part in output for part in shown)
            record("overlay file", name, before, named, seconds)
    for kind, (done, total) in counts.items():
        print(f"{kind}: rejected before any job with the key (or file and line) named: {done} of {total}")
    print(f"time to reject: median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
          f"dry run of the unchanged config (baseline, {'planned' if planned else 'FAILED'}): {baseline:.2f} s; "
          f"median ratio {statistics.median(times) / baseline:.2f}")


if __name__ == "__main__":
    main()
