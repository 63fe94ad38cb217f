"""GPUs, gradient accumulation and time limit of a training cell, from a memory model.

Config `hardware` names the GPUs (memory per GPU, GPUs per node, headroom) and the table of
per-image costs (`hardware.memory_per_image`, a CSV the canary measures and can rewrite:
scripts/canary_table.py --write-memory-table). A cell's estimate per GPU is

    graphs x saved bytes per image x images per micro-batch
    + parameters x (4 fp32 copies: weights, gradients, optimizer state, EMA; + a bf16 copy under bf16)

with graphs = 2 for TRADES (the clean and adversarial passes are kept until one backward) and 1
otherwise (the attack's graphs are freed step by step). A cell gets the fewest GPUs, up to one
node, whose usable memory (memory x (1 - headroom)) holds its share of the global batch; a cell
that one node cannot hold gets gradient accumulation on the node's GPUs: the fewest micro-batches
per GPU that fit (recipe key accumulation_steps, dra.training.loop). `resources.train.gpu` may fix
the GPU count instead of `auto` (0: the CPU; mini), and the plan then only picks the accumulation.
Micro-batches are runs of whole BatchNorm groups (recipe key batchnorm_group, dra.training.batchnorm),
cut by the rule of dra.training.distributed (`micro_batch_images`); no GPU gets an empty one.

The time limit per attempt is the cell's steps x images per GPU x the measured GPU seconds per
image (the table's gpu_seconds_per_image, written by a canary on a GPU) x RUNTIME_MARGIN; without
a measurement, `resources.train.runtime`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
MIB = 2**20
# validation (40-step PGD on 1024 images each epoch), checkpoints and data loading on top of the steps
RUNTIME_MARGIN = 1.5
TABLE_COLUMNS = ["arch", "image_size", "precision", "saved_mib_per_image", "parameters", "gpu_seconds_per_image",
                 "measured"]


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class MemoryRow:
    saved_bytes_per_image: float
    parameters: int
    gpu_seconds_per_image: float | None
    measured: str


@dataclass(frozen=True)
class CellPlan:
    gpus: int                       # 0: the CPU
    accumulation_steps: int         # micro-batches per GPU per optimizer step
    micro_batch: int                # images per micro-batch (the largest)
    bytes_per_gpu: float | None     # the estimate; None when the table has no row for the cell
    usable_bytes_per_gpu: float
    runtime_minutes: int | None     # None: no measured step time, the configured runtime applies
    steps: int


def precision_name(precision: dict) -> str:
    return "bf16" if precision["bf16"] else "fp32"


def read_memory_table(path: str | Path) -> dict[tuple[str, int, str], MemoryRow]:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"hardware.memory_per_image: {path} does not exist; point it at the per-image memory table "
                        "(config/data/memory_per_image.csv)")
    rows = {}
    with path.open() as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != TABLE_COLUMNS:
            raise PlanError(f"{path}: columns {reader.fieldnames}; expected {TABLE_COLUMNS}")
        for line, row in enumerate(reader, start=2):
            try:
                key = (row["arch"], int(row["image_size"]), row["precision"])
                rows[key] = MemoryRow(float(row["saved_mib_per_image"]) * MIB, int(row["parameters"]),
                                      float(row["gpu_seconds_per_image"]) if row["gpu_seconds_per_image"] else None,
                                      row["measured"])
            except ValueError as error:
                raise PlanError(f"{path}, line {line}: {error}; fix the row or rerun the canary") from error
    return rows


def graphs_kept(objective: str) -> int:
    # an objective with a clean branch (TRADES) keeps the clean and the adversarial graph (dra.registry)
    from dra.registry import OBJECTIVES

    return 2 if OBJECTIVES.meta(objective).get("clean_branch", False) else 1


def micro_batch_images(batch: int, chunks: int, group: int | None) -> int | None:
    """Images of the largest of `chunks` micro-batches when `batch` is cut into runs of whole
    `group`-image BatchNorm groups (dra.training.distributed.cut_points); None when there are fewer
    groups than micro-batches (a GPU would get none)."""
    unit = group or 1
    units = math.ceil(batch / unit)
    return None if chunks > units else min(batch, math.ceil(units / chunks) * unit)


def bytes_per_gpu(row: MemoryRow, graphs: int, micro_batch: int, bf16: bool) -> float:
    return graphs * row.saved_bytes_per_image * micro_batch + row.parameters * (4 * 4 + (2 if bf16 else 0))


def fixed_share(cell, batch: int, gpus: int, group: int | None) -> int:
    """The largest micro-batch on a fixed number of GPUs (resources.train.gpu), without accumulation."""
    images = micro_batch_images(batch, gpus, group)
    if images is None:
        raise PlanError(f"cell {cell.id}: its batch of {batch} is {math.ceil(batch / group)} BatchNorm group(s) of "
                        f"{group} (recipe key batchnorm_group), fewer than the {gpus} GPUs of resources.train.gpu; "
                        "use fewer GPUs or a smaller group")
    return images


def plan_cell(config: dict, cell, objective: str, precision: dict, image_size: int, steps: int,
              table: dict | None = None) -> CellPlan:
    """The GPUs and micro-batches of `cell` (dra.config.Cell) under config's hardware."""
    hardware = config["hardware"]
    table = read_memory_table(hardware["memory_per_image"]) if table is None else table
    usable = hardware["gpu_memory_gib"] * GIB * (1.0 - hardware["headroom_fraction"])
    fixed = config["resources"]["train"]["gpu"]
    batch = cell.batch_size
    group = config["recipes"][cell.dataset][cell.arch]["batchnorm_group"]
    row = table.get((cell.arch, image_size, precision_name(precision)))
    if fixed == 0:  # the CPU: no GPU memory to fit
        return CellPlan(0, 1, batch, None, usable, None, steps)
    if row is None:
        if fixed == "auto":
            raise PlanError(f"{hardware['memory_per_image']} has no row for arch {cell.arch} "
                            f"at {image_size}x{image_size} "
                            f"in {precision_name(precision)} (cell {cell.id}); run the canary for it "
                            "(README, 'Running the paper on a cluster') or set resources.train.gpu to a number")
        return CellPlan(fixed, 1, fixed_share(cell, batch, fixed, group), None, usable, None, steps)

    graphs = graphs_kept(objective)
    candidates = [fixed] if fixed != "auto" else range(1, hardware["gpus_per_node"] + 1)
    gpus, accumulation = None, None
    if fixed != "auto":
        fixed_share(cell, batch, fixed, group)
    # at least one BatchNorm group per micro-batch: more GPUs or micro-batches would leave some empty
    fits = [count for count in candidates if micro_batch_images(batch, count, group) is not None]

    def holds(chunks: int) -> bool:
        images = micro_batch_images(batch, chunks, group)
        return images is not None and bytes_per_gpu(row, graphs, images, precision["bf16"]) <= usable

    for count in fits:  # the fewest GPUs that hold the share without accumulation
        if holds(count):
            gpus, accumulation = count, 1
            break
    if gpus is None:  # the most GPUs on offer, then the fewest micro-batches per GPU that fit
        gpus = fits[-1]
        accumulation = next((k for k in range(2, math.ceil(batch / gpus) + 1) if holds(gpus * k)), None)
        if accumulation is None:
            smallest = min(group or 1, batch)
            needed = bytes_per_gpu(row, graphs, smallest, precision["bf16"])
            raise PlanError(f"cell {cell.id}: {smallest} image(s) of {cell.arch} (one BatchNorm group, recipe key "
                            f"batchnorm_group) need {needed / GIB:.1f} "
                            f"GiB, more than the {usable / GIB:.1f} GiB usable of one GPU (hardware.gpu_memory_gib, "
                            "headroom_fraction)")
    micro_batch = micro_batch_images(batch, gpus * accumulation, group)
    runtime = None
    if row.gpu_seconds_per_image is not None:
        runtime = math.ceil(steps * math.ceil(batch / gpus) * row.gpu_seconds_per_image * RUNTIME_MARGIN / 60)
    return CellPlan(gpus, accumulation, micro_batch, bytes_per_gpu(row, graphs, micro_batch, precision["bf16"]),
                    usable, runtime, steps)
