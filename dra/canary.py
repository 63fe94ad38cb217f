"""The canary: one paper cell for a few optimizer steps at its real shapes, before GPU-days.

`canary_cell(recipe, ...)` takes a cell's resolved recipe at the canary overlay (config/canary.yaml),
whose inputs the paper's own rules built from random stand-ins for every download: random images in
the real formats (a CIFAR archive converted by prepare_cifar, an ImageNet-layout JPEG folder indexed
by prepare_imagenet, DM-AT npz parts joined by prepare_synthetic), randomly initialised networks at
the paper's configuration (EDM DDPM++ 55.7M, LightningDiT-XL/1 with its VA-VAE f16d32, DINOv3
backbones) whose features the feature rules extracted. Everything that decides memory and time stays:
the architecture, input size, precision, objective with its attack, optimizer, DRA head and target.
train_cell then runs `steps` steps of `micro_batch` images (one GPU's share of one micro-batch in
the planned job, BatchNorm over the recipe's groups), saves the training state after the last step
and at the epoch's end, and validates once: DM-AT's attack on one chunk of held-out images as large
as the micro-batch, the most a GPU of the job attacks at once (dra.training.loop.validate), so the
canary meets every allocation of the paper run. Recorded: pass or fail, seconds per step (after the first), peak memory
(torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on the CPU, which includes the
interpreter, torch and the opened data) and the bytes saved for backward per image
(dra.training.memory), the figure the GPU plan (dra.gpu_plan) reads.
"""

from __future__ import annotations

import copy
import resource
import shutil
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from dra.io import write_json


def canary_recipe(recipe: dict, micro_batch: int, steps: int) -> dict:
    """The recipe as one GPU of the cell's job runs it: `steps` steps of `micro_batch` images, a state
    saved after the last step (inside the step loop) and at the end of the epoch, and one validation
    of one chunk of `micro_batch` held-out images (none where the recipe holds none out: ImageNet)."""
    recipe = copy.deepcopy(recipe)
    recipe["data"].update(val_size=min(recipe["data"]["val_size"], micro_batch),
                          epoch_reference_size=steps * micro_batch)
    recipe.update(batch_size=micro_batch, epochs=1, accumulation_steps=1)
    recipe["checkpoint"]["every_steps"] = steps
    return recipe


def check_validated_and_saved(prepared: dict, out_dir: Path, state_dir: Path) -> None:
    """The run did what the canary promises: a state on disk and, with held-out images, a validation."""
    import csv

    from dra.training.loop import STATE_FILE

    if not (state_dir / STATE_FILE).is_file():
        raise RuntimeError(f"{state_dir / STATE_FILE}: the canary's run saved no training state")
    with (out_dir / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    if prepared["data"]["val_size"] and not rows[-1]["val_robust_acc"]:
        raise RuntimeError(f"{out_dir / 'log.csv'}: the canary's run did not validate")


def saved_mib_per_image(recipe: dict, device: torch.device) -> tuple[float, int]:
    """Bytes saved for backward per image by one graph of the classifier and DRA head, and their parameters."""
    from dra.data.store import open_feature_store
    from dra.models import create_classifier
    from dra.training.dra_head import ProjectionHead
    from dra.training.memory import saved_bytes_per_image

    data, precision = recipe["data"], recipe["precision"]
    model = create_classifier(recipe["arch"], data["num_classes"], data["mean"], data["std"]).to(device)
    head = None
    if recipe["dra"] is not None:
        target_dim = open_feature_store(recipe["dra"]["features"]["real"]).features.shape[-1]
        head = ProjectionHead(model.feature_dim, recipe["dra"]["head_hidden"], target_dim,
                              recipe["dra"]["head_layers"]).to(device)
    if precision["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    per_image = saved_bytes_per_image(model, head, data["image_size"], precision["bf16"], precision["channels_last"],
                                      device)
    parameters = sum(p.numel() for p in model.parameters()) + (sum(p.numel() for p in head.parameters()) if head else 0)
    return per_image / 2**20, parameters


def canary_cell(recipe: dict, work: str | Path, out_json: str | Path, micro_batch: int, steps: int,
                threads: int, planned: dict | None = None) -> dict:
    """Run the cell for `steps` steps of `micro_batch` images; write and return its measurements
    (with `planned`: the GPU plan's gpus, accumulation and GiB per GPU, for the table)."""
    from dra.training import train_cell

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)  # a rerun measures afresh instead of resuming a finished run
    work.mkdir(parents=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cell = recipe["cell"]
    row = {"cell": f"{cell['dataset']}/{cell['arch']}/{cell['method']}/{cell['budget']}", "arch": cell["arch"],
           "image_size": recipe["data"]["image_size"], "precision": "bf16" if recipe["precision"]["bf16"] else "fp32",
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "micro_batch": micro_batch,
           "steps": steps, "validated_images": None, "passed": False, "step_seconds": None, "peak_memory_mib": None,
           "saved_mib_per_image": None, "parameters": None, "error": "", **(planned or {})}
    prepared = canary_recipe(recipe, micro_batch, steps)
    stamps = []
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        train_cell(prepared, work / "out", work / "state", threads,
                   after_step=lambda _step: stamps.append(time.perf_counter()))
        check_validated_and_saved(prepared, work / "out", work / "state")
        row["validated_images"] = prepared["data"]["val_size"]
        if device.type == "cuda":
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            row["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        times = np.diff([started] + stamps)
        # not the first step (allocation, warm-up), nor the last where there are 3 or more (its state save)
        timed = times[1:-1] if len(times) > 2 else times[1:] if len(times) > 1 else times
        row["step_seconds"] = float(statistics.median(timed))
        row["saved_mib_per_image"], row["parameters"] = saved_mib_per_image(prepared, device)
        row["passed"] = True
    except Exception as error:  # a cell that fails is a row of the table, not a stopped canary
        row["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        traceback.print_exc()
    write_json(out_json, row)
    return row


TABLE_COLUMNS = ["cell", "passed", "device", "micro_batch", "steps", "validated_images", "step_seconds",
                 "peak_memory_mib",
                 "saved_mib_per_image", "parameters", "planned_gpus", "planned_accumulation", "planned_gib_per_gpu",
                 "error"]


def write_canary_table(rows: list[dict], out_csv: str | Path, out_md: str | Path) -> None:
    """One row per cell, as CSV and Markdown."""
    import pandas as pd

    from dra.io import atomic_file

    frame = pd.DataFrame([{column: row.get(column) for column in TABLE_COLUMNS} for row in rows], columns=TABLE_COLUMNS)
    with atomic_file(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_file(out_md) as tmp:
        tmp.write_text(frame.to_markdown(index=False, floatfmt="g") + "\n")


def update_memory_table(rows: list[dict], path: str | Path, measured: str) -> int:
    """Rewrite the GPU plan's per-image table (dra.gpu_plan) with the passed cells' measurements:
    per (arch, image size, precision) the largest saved bytes per image and parameter count, and,
    from a GPU run, seconds per image (step time over the micro-batch). Returns the rows replaced."""
    import csv

    from dra.gpu_plan import TABLE_COLUMNS as MEMORY_COLUMNS
    from dra.io import atomic_file

    path = Path(path)
    with path.open() as handle:
        table = {(r["arch"], r["image_size"], r["precision"]): r for r in csv.DictReader(handle)}
    fresh: dict[tuple, dict] = {}
    for row in rows:
        if not row["passed"]:
            continue
        key = (row["arch"], str(row["image_size"]), row["precision"])
        seconds = row["step_seconds"] / row["micro_batch"] if row["device"] != "cpu" else None
        old = fresh.get(key)
        if old is None or row["saved_mib_per_image"] > float(old["saved_mib_per_image"]):
            fresh[key] = {"arch": key[0], "image_size": key[1], "precision": key[2],
                          "saved_mib_per_image": f"{row['saved_mib_per_image']:.1f}", "parameters": row["parameters"],
                          "gpu_seconds_per_image": f"{seconds:.6g}" if seconds is not None else "",
                          "measured": f"{row['device']} {measured}"}
    table.update(fresh)
    with atomic_file(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MEMORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table.values())
    return len(fresh)
