"""What the export_cell rule writes for one cell and how long it takes, through Snakemake.

    python benchmarks/export_cell.py                    # a mini cell and a paper-size WRN-28-10 cell
    python benchmarks/export_cell.py --only mini

In a private copy of the workflow, a cell folder is laid out as the workflow leaves it (recipe.yaml
from dra.config.resolve_recipe, train/model.pt, autoattack.json/.npz, the two benchmark files),
then `snakemake <cell>/export/config.json --allowed-rules export_cell` runs the rule alone. The weights are
the architecture's initialisation and the evaluation files stand-ins (clean flags of the model's
own predictions, robust flags none): neither changes the time or the sizes. Prints the files and
their sizes, the rule's time from its benchmark file, and that time against the cell's training
and evaluation time where a finished run's benchmark files are given (--run-root, e.g.
results/mini after README's main command); the whole `all` with and without exports is what
benchmarks/mini_rule_times.py prints for a finished run (rule export_cell's share).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from workflow_helpers import copy_workflow, run_snakemake  # noqa: E402

CELLS = {
    "mini": (["config/mini.yaml"], "digits/wrn-10-1/at/nosyn-bs128-ep30"),
    "paper": ([], "cifar10/wrn-28-10/dm-at+dra/syn20m-bs2048-ep2400"),
}


def seconds_of(path: Path) -> float:
    with open(path) as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def lay_out_cell(work: Path, overlays: list[str], cell_id: str) -> Path:
    from snakemake.utils import update_config

    from dra import config as cfg
    from dra.evaluation.autoattack import AutoAttackResult, write_autoattack_outputs
    from dra.io import write_yaml
    from dra.models import create_classifier

    config = cfg.load_config_file(work / "config.yaml")
    for overlay in overlays:
        update_config(config, cfg.load_config_file(work / overlay))
    cfg.validate_config(config)
    recipe = cfg.resolve_recipe(config, cfg.parse_cell(cell_id))
    cell = work / cfg.results_dir(config) / cell_id
    (cell / "train").mkdir(parents=True)
    write_yaml(cell / "recipe.yaml", recipe)
    data = recipe["data"]
    model = create_classifier(recipe["arch"], data["num_classes"], data["mean"], data["std"]).eval()
    torch.save(model.state_dict(), cell / "train" / "model.pt")
    n = 20
    dataset = config["datasets"][recipe["cell"]["dataset"]]
    result = AutoAttackResult(indices=np.arange(n), clean=np.ones(n, bool), robust=np.zeros(n, bool),
                              attack_disagreements=0, seconds=0.0)
    write_autoattack_outputs(result, dataset["eps_255"] / 255, 0, cell / "train" / "model.pt",
                             cell / "autoattack.json", cell / "autoattack.npz", attacks=["apgd-ce"])
    for path in (cell / "train" / "train_cell.benchmark.tsv", cell / "autoattack.benchmark.tsv"):
        path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                        "1.0\t0:00:01\t1\t1\t1\t1\t0\t0\t0\t1.0\n")
    return cell


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CELLS), default=None)
    parser.add_argument("--run-root", default=None, help="results/<scale> of a finished run: ratio to its cell's jobs")
    args = parser.parse_args(argv)
    for name, (overlays, cell_id) in CELLS.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = copy_workflow(Path(tmp))
            cell = lay_out_cell(work, overlays, cell_id)
            started = time.perf_counter()
            target = str(cell.relative_to(work) / "export" / "config.json")
            done = run_snakemake(work, target, "--allowed-rules", "export_cell",
                                 "--cores", "1", *(["--configfile", *overlays] if overlays else []), timeout=1800)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{name}: snakemake failed:\n{done.stderr[-3000:]}")
            rule_seconds = seconds_of(cell / "export_cell.benchmark.tsv")
            print(f"{name}: {cell_id}")
            total = 0
            for path in sorted((cell / "export").rglob("*")):
                if path.is_file():
                    total += path.stat().st_size
                    print(f"  {path.relative_to(cell / 'export')}: {path.stat().st_size:,} bytes")
            weights = (cell / "train" / "model.pt").stat().st_size
            print(f"  total {total:,} bytes = {total / weights:.2f} x train/model.pt ({weights:,} bytes)")
            print(f"  export_cell: {rule_seconds:.1f} s (benchmark file), snakemake call {wall:.1f} s")
            if args.run_root:
                run_cell = Path(args.run_root) / cell_id
                jobs = [run_cell / "train" / "train_cell.benchmark.tsv", run_cell / "autoattack.benchmark.tsv"]
                if all(path.is_file() for path in jobs):
                    measured = sum(seconds_of(path) for path in jobs)
                    print(f"  ratio export / (train + autoattack of {run_cell}): {rule_seconds / measured:.4f}")


if __name__ == "__main__":
    main()
