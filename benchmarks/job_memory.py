"""Measure the per-image memory of every GPU job of a configuration that is not a training cell, on
the CPU, and write the table the job plans read (config hardware.job_memory_per_image).

    python benchmarks/job_memory.py                                  # print what config.yaml needs
    python benchmarks/job_memory.py --write                          # and rewrite its rows
    python benchmarks/job_memory.py --configfile config/canary.yaml --write

One row per network, image size and mode that the jobs of dra.config.gpu_jobs run; each is
measured by dra.job_memory (the peak of live tensors at batches 1 and 2, randomly initialised
networks at the configured shapes). Rows of other networks already in the table are kept.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import time
from pathlib import Path

import torch
import yaml
from snakemake.utils import update_config

from dra.config import gpu_jobs
from dra.gpu_plan import JOB_TABLE_COLUMNS, MIB
from dra.io import atomic_file
from dra.job_memory import measure_job

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", action="append", default=[], help="overlay on config.yaml (repeatable)")
    parser.add_argument("--write", action="store_true", help="rewrite the measured rows of the table")
    parser.add_argument("--only", default=None, help="measure only this network")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for overlay in args.configfile:
        update_config(config, yaml.safe_load(Path(overlay).read_text()))
    path = ROOT / config["hardware"]["job_memory_per_image"]
    table = {}
    if path.is_file():
        with path.open() as handle:
            table = {(r["network"], r["image_size"], r["precision"], r["mode"]): r for r in csv.DictReader(handle)}
    jobs = {job.key: job for job in gpu_jobs(config) if args.only in (None, job.network)}
    print(f"{'network':<20}{'size':>5}{'mode':>8}{'MiB/image':>11}{'parameters':>12}{'seconds':>9}  rules")
    for key, job in jobs.items():
        started = time.perf_counter()
        per_image, parameters = measure_job(config, job)
        rules = sorted({j.rule for j in gpu_jobs(config) if j.key == key})
        print(f"{job.network:<20}{job.image_size:>5}{job.mode:>8}{per_image / MIB:>11.2f}{parameters:>12}"
              f"{time.perf_counter() - started:>9.0f}  {' '.join(rules)}", flush=True)
        table[(key[0], str(key[1]), key[2], key[3])] = {
            "network": key[0], "image_size": key[1], "precision": key[2], "mode": key[3],
            "mib_per_image": f"{per_image / MIB:.2f}", "parameters": parameters,
            "measured": f"cpu {datetime.date.today().isoformat()}"}
    if args.write:
        with atomic_file(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=JOB_TABLE_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(table.values(), key=lambda r: (r["network"], int(r["image_size"]), r["mode"])))
        print(f"{path}: {len(jobs)} rows measured")


if __name__ == "__main__":
    main()
