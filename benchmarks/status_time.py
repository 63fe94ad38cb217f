"""How long `python -m scripts.status` takes, and how large a cell's TensorBoard events are.

    python benchmarks/status_time.py                 # paper DAG without results; a finished tiny tree
    python benchmarks/status_time.py --dry-run       # + the baseline: `snakemake -n all_tables` on the paper

1. The paper's all_tables on an empty results folder (every cell not started): dra.status from
   reading the config to the rendered table, the median of --repeats runs.
2. A finished results tree at the mini configuration: one tiny cell (the tests' recipe, 3 epochs of
   3 steps, TRADES + DRA) trained with dra.training.loop.train_cell, its folders copied to every
   cell of the mini's `all` target with an autoattack.json and benchmark files, so that every
   cell is done; then the same timing. Also printed: the bytes of the tiny cell's event files, per
   step and per epoch, which extrapolate to a cell's steps (dra.monitor logs at most SCALAR_POINTS
   steps per run).
With --dry-run, the ratio to Snakemake's own dry run of the paper's all_tables (the other way to
see what is left), on the same machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def timed(function, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def status_seconds(configfiles: list[Path], directory: Path, target: str, repeats: int) -> tuple[float, str]:
    from dra.status import campaign_status, load_workflow_config, render_terminal

    shown = []

    def run():
        config = load_workflow_config(configfiles, ROOT)
        shown.append(render_terminal(campaign_status(config, directory, target)))

    return timed(run, repeats), shown[-1]


def finished_tiny_tree(work: Path) -> tuple[Path, dict[str, int]]:
    import numpy as np
    from test_training_loop import _write_feature_store, _write_image_store, tiny_recipe

    from dra import config as cfg
    from dra.status import load_workflow_config, planned_cells, train_state_dir
    from dra.training import train_cell

    stores = work / "stores"
    rng = np.random.default_rng(0)
    train_labels = _write_image_store(stores / "train", 80, rng)
    synthetic_labels = _write_image_store(stores / "synthetic", 64, rng)
    _write_feature_store(stores / "features_train", train_labels, 2, rng, stores / "train")
    _write_feature_store(stores / "features_synthetic", synthetic_labels, 2, rng, stores / "synthetic")
    recipe = tiny_recipe(stores, epochs=3)
    train_cell(copy.deepcopy(recipe), work / "tiny" / "train", work / "tiny" / "state", threads=1)
    events = list((work / "tiny" / "train").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(work / "tiny" / "train"), size_guidance={"scalars": 0})
    accumulator.Reload()
    points = sum(len(accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"])
    sizes = {"event_bytes": sum(path.stat().st_size for path in events), "steps": 9, "epochs": 3, "points": points}

    config = load_workflow_config([ROOT / "config" / "mini.yaml"], ROOT)
    tree = work / "tree"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for planned in planned_cells(config, "all"):
        folder = tree / cfg.cell_dir(config, planned.cell)
        shutil.copytree(work / "tiny" / "train", folder / "train")
        shutil.copytree(work / "tiny" / "state", tree / train_state_dir(config, planned.cell))
        for name in planned.needs:
            if not (folder / name).exists():
                (folder / name).write_text(json.dumps({"clean_accuracy": 90.0, "robust_accuracy": 50.0}))
        (folder / "autoattack.benchmark.tsv").write_text(header + "60.0\t0:01:00\t0\t0\t0\t0\t0\t0\t0\t0\n")
    return tree, sizes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="also time `snakemake -n all_tables` (the baseline)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "empty").mkdir()
        paper, _ = status_seconds([], work / "empty", "all_tables", args.repeats)
        print(f"status, paper all_tables, no results: {paper:.2f} s (median of {args.repeats})")
        tree, sizes = finished_tiny_tree(work)
        finished, shown = status_seconds([ROOT / "config" / "mini.yaml"], tree, "all", args.repeats)
        print(f"status, mini all, every cell done (tiny copies): {finished:.2f} s (median of {args.repeats})")
        print(f"event files of one tiny cell ({sizes['steps']} steps, {sizes['epochs']} epochs, TRADES + DRA): "
              f"{sizes['event_bytes']} bytes, {sizes['points']} points, "
              f"{sizes['event_bytes'] / sizes['points']:.0f} bytes per point")
        print(shown)
    if args.dry_run:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "-n", "all_tables", "--quiet"], cwd=ROOT, check=True,
                       capture_output=True)
        dry = time.perf_counter() - started
        print(f"snakemake -n all_tables (paper): {dry:.2f} s; status / dry run = {paper / dry:.2f}")


if __name__ == "__main__":
    main()
