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
per GPU that fit (recipe key accumulation_steps, dra.training.loop). That count then moves to one
that packs the node (a divisor of gpus_per_node, pack_node) where it costs no GPU-hours: WRN-70-16
needs 5 of 8 GPUs of 80 GiB and gets 8 of 128 images each, the same 1,024 images per step. `resources.train.gpu` may fix
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


def read_table(path: str | Path, key: str, what: str, columns: list[str], parse, remedy: str) -> dict:
    """{key: parse(row)} of a CSV table of config key `key`; a missing file, other columns or a row
    that does not parse stop naming the file, the line and `remedy`."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{key}: {path} does not exist; point it at {what}")
    rows = {}
    with path.open() as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != columns:
            raise PlanError(f"{path}: columns {reader.fieldnames}; expected {columns}")
        for line, row in enumerate(reader, start=2):
            try:
                row_key, value = parse(row)
            except ValueError as error:
                raise PlanError(f"{path}, line {line}: {error}; fix the row or {remedy}") from error
            rows[row_key] = value
    return rows


def read_memory_table(path: str | Path) -> dict[tuple[str, int, str], MemoryRow]:
    def parse(row):
        seconds = float(row["gpu_seconds_per_image"]) if row["gpu_seconds_per_image"] else None
        return ((row["arch"], int(row["image_size"]), row["precision"]),
                MemoryRow(float(row["saved_mib_per_image"]) * MIB, int(row["parameters"]), seconds, row["measured"]))

    return read_table(path, "hardware.memory_per_image",
                      "the per-image memory table (config/data/memory_per_image.csv)", TABLE_COLUMNS, parse,
                      "rerun the canary")


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


def images_computed(batch: int, gpus: int, accumulation: int, group: int | None) -> int:
    """Images the GPUs compute per optimizer step: each of gpus x accumulation micro-batches is as
    large as the largest (whole BatchNorm groups), so a batch that does not divide evenly costs a
    little more. GPU-hours go with this count, whatever the number of GPUs."""
    return gpus * accumulation * micro_batch_images(batch, gpus * accumulation, group)


def pack_node(batch: int, gpus: int, accumulation: int, gpus_per_node: int, fewest_micro_batches,
              group: int | None) -> tuple[int, int]:
    """A GPU count that packs the node: a divisor of gpus_per_node (5 GPUs of 8 leave 3 that no
    other 5-GPU job can use), with the fewest micro-batches that fit it, where that computes no
    more images per step than the fewest-GPU plan (gpus, accumulation): fewest micro-batches first
    (shorter jobs), then fewest GPUs; else that plan."""
    best = (accumulation, gpus) if gpus_per_node % gpus == 0 else None
    for count in (d for d in range(1, gpus_per_node + 1) if gpus_per_node % d == 0):
        micro_batches = fewest_micro_batches(count)
        if micro_batches is None:
            continue
        if images_computed(batch, count, micro_batches, group) <= images_computed(batch, gpus, accumulation, group):
            best = min(best or (micro_batches, count), (micro_batches, count))
    return (gpus, accumulation) if best is None else (best[1], best[0])


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

    def holds(chunks: int) -> bool:
        # the largest of `chunks` micro-batches (whole BatchNorm groups) fits one GPU
        images = micro_batch_images(batch, chunks, group)
        return images is not None and bytes_per_gpu(row, graphs, images, precision["bf16"]) <= usable

    def fewest_micro_batches(count: int) -> int | None:
        # the fewest micro-batches per GPU whose share fits `count` GPUs
        return next((k for k in range(1, math.ceil(batch / count) + 1) if holds(count * k)), None)

    candidates = [fixed] if fixed != "auto" else range(1, hardware["gpus_per_node"] + 1)
    gpus, accumulation = None, None
    if fixed != "auto":
        fixed_share(cell, batch, fixed, group)
    # at least one BatchNorm group per micro-batch: more GPUs or micro-batches would leave some empty
    fits = [count for count in candidates if micro_batch_images(batch, count, group) is not None]

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
    if fixed == "auto":
        gpus, accumulation = pack_node(batch, gpus, accumulation, hardware["gpus_per_node"], fewest_micro_batches,
                                       group)
    micro_batch = micro_batch_images(batch, gpus * accumulation, group)
    runtime = None
    if row.gpu_seconds_per_image is not None:
        runtime = math.ceil(steps * math.ceil(batch / gpus) * row.gpu_seconds_per_image * RUNTIME_MARGIN / 60)
    return CellPlan(gpus, accumulation, micro_batch, bytes_per_gpu(row, graphs, micro_batch, precision["bf16"]),
                    usable, runtime, steps)


# ---------------------------------------------------------------------------------------------------
# Every other GPU job: the batch each rule passes to its script, from the same kind of memory model.
#
# A job runs one network on one GPU in one of four modes, each with its own per-image cost (the
# table hardware.job_memory_per_image, measured on the CPU by benchmarks/job_memory.py with
# dra.job_memory, as the training table is) and its own bytes per parameter:
#   attack  eval mode, weights frozen, gradient with respect to the input (AutoAttack, PGD):
#           the peak of live tensors over one forward and backward; 4 bytes per parameter
#   infer   no gradient (feature extraction, representations): the peak of live tensors over one
#           forward; 4 bytes per parameter
#   sample  no gradient, one sampling step with the guidance pair and the decoding of its latents;
#           4 bytes per parameter (the diffusion transformer and its tokenizer)
#   train   a training step with parameter gradients (the noisy classifier): Adam keeps weights,
#           gradients and two moments, 16 bytes per parameter; its batch is the configured one,
#           which must fit
# A job's batch is the largest whose estimate fits the usable memory of one GPU, at most the job's
# images; on the CPU (the job's resources gpu: 0) it is hardware.cpu_batch_size.

JOB_TABLE_COLUMNS = ["network", "image_size", "precision", "mode", "mib_per_image", "parameters", "measured"]
MODES = ("attack", "infer", "sample", "train")
BYTES_PER_PARAMETER = {"attack": 4, "infer": 4, "sample": 4, "train": 16}
# the zoo of Figures 1 and 9 is planned by its largest network (dra.job_memory.ZOO_PROXY)
ZOO_NETWORK = "robustbench-zoo"


@dataclass(frozen=True)
class JobRow:
    bytes_per_image: float
    parameters: int
    measured: str


@dataclass(frozen=True)
class Job:
    """One kind of GPU job: the rule, the network it runs (an arch, a diffusion model or the zoo),
    the mode, the images it processes, and the resources family whose gpu count it gets."""
    rule: str
    network: str
    image_size: int
    mode: str
    images: int
    resources: str            # evaluate or diffusion (config resources.<family>)
    fixed_batch: int | None = None   # a training job's configured batch (it must fit)
    label: str = ""           # what the job is for (a cell, a dataset), for messages

    @property
    def key(self) -> tuple[str, int, str, str]:
        return (self.network, self.image_size, "fp32", self.mode)


@dataclass(frozen=True)
class JobPlan:
    job: Job
    gpus: int                 # 0: the CPU
    batch: int
    bytes_per_gpu: float | None
    usable_bytes_per_gpu: float


def read_job_table(path: str | Path) -> dict[tuple[str, int, str, str], JobRow]:
    def parse(row):
        if row["mode"] not in MODES:
            raise ValueError(f"mode {row['mode']!r} is none of {MODES}")
        return ((row["network"], int(row["image_size"]), row["precision"], row["mode"]),
                JobRow(float(row["mib_per_image"]) * MIB, int(row["parameters"]), row["measured"]))

    return read_table(path, "hardware.job_memory_per_image",
                      "the per-image memory table of the GPU jobs (config/data/job_memory_per_image.csv)",
                      JOB_TABLE_COLUMNS, parse, "rerun python benchmarks/job_memory.py --write")


def job_bytes(row: JobRow, mode: str, batch: int) -> float:
    return row.bytes_per_image * batch + row.parameters * BYTES_PER_PARAMETER[mode]


def plan_job(config: dict, job: Job, table: dict | None = None) -> JobPlan:
    """The batch of one GPU job under config's hardware (see the comment above)."""
    hardware = config["hardware"]
    usable = hardware["gpu_memory_gib"] * GIB * (1.0 - hardware["headroom_fraction"])
    gpus = config["resources"][job.resources]["gpu"]
    if gpus == 0:  # the CPU: the job's memory is its mem_mb, not planned
        return JobPlan(job, 0, job.fixed_batch or min(hardware["cpu_batch_size"], job.images), None, usable)
    table = read_job_table(hardware["job_memory_per_image"]) if table is None else table
    row = table.get(job.key)
    if row is None:
        raise PlanError(f"{hardware['job_memory_per_image']} has no row for network {job.network} at "
                        f"{job.image_size}x{job.image_size} in mode {job.mode} (rule {job.rule}, {job.label}); "
                        "measure it: python benchmarks/job_memory.py --write (with --configfile for an overlay)")
    if job.fixed_batch is not None:
        if job_bytes(row, job.mode, job.fixed_batch) > usable:
            raise PlanError(f"rule {job.rule} ({job.label}): its configured batch of {job.fixed_batch} needs "
                            f"{job_bytes(row, job.mode, job.fixed_batch) / GIB:.1f} GiB, more than the "
                            f"{usable / GIB:.1f} "
                            "GiB usable of one GPU (hardware.gpu_memory_gib, headroom_fraction)")
        return JobPlan(job, 1, job.fixed_batch, job_bytes(row, job.mode, job.fixed_batch), usable)
    batch = math.floor((usable - row.parameters * BYTES_PER_PARAMETER[job.mode]) / row.bytes_per_image)
    if batch < 1:
        raise PlanError(f"rule {job.rule} ({job.label}): one image of {job.network} in mode {job.mode} needs "
                        f"{job_bytes(row, job.mode, 1) / GIB:.1f} GiB, more than the {usable / GIB:.1f} GiB usable of "
                        "one GPU (hardware.gpu_memory_gib, headroom_fraction)")
    batch = min(batch, job.images)
    return JobPlan(job, 1, batch, job_bytes(row, job.mode, batch), usable)
