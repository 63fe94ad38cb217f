"""torchrun support: one process per device, the global batch split across ranks.

Under torchrun (RANK and WORLD_SIZE in the environment) the training module is wrapped in
DistributedDataParallel, with NCCL on CUDA and gloo on CPU. Every rank draws the random numbers
of the WHOLE global batch (order, augmentation, attack start, target views) from identically
seeded generators and keeps its own slice, so a run on W processes sees the same examples and
noise as a run on one.

Gradient accumulation (recipe key `accumulation_steps` = k) splits each rank's slice into k
micro-batches, forwarded and backwarded one after another before one optimizer step. The global
batch is cut into W * k chunks by one rule, rank r taking chunks r*k ... r*k + k - 1, so k
micro-batches on W ranks see exactly the chunks that W * k ranks without accumulation would.
With BatchNorm groups (recipe key `batchnorm_group` = G, dra.training.batchnorm) the cuts fall
between groups: the global batch is G-image groups (the last one possibly shorter), and the
chunks are runs of whole groups, so every group is normalised whole, on whichever rank.

Validation (`share`) splits the held-out images evenly over the ranks, each attacking its share in
chunks no larger than the largest training micro-batch (`largest_micro_batch`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device
    accumulation_steps: int = 1
    batchnorm_group: int | None = None  # images per BatchNorm normalisation; None: cuts anywhere

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def chunks(self) -> int:
        """Micro-batches of one optimizer step over all ranks."""
        return self.world_size * self.accumulation_steps

    def micro_batches(self, global_size: int) -> list[slice]:
        """This rank's micro-batches as slices of the global batch: chunks rank*k ... rank*k + k - 1
        of the global batch cut into world_size * k chunks whose sizes differ by at most one
        BatchNorm group (one image without groups); a chunk always starts at a group's start."""
        k = self.accumulation_steps
        every = cut_points(global_size, self.chunks, self.batchnorm_group)
        return [slice(every[index], every[index + 1]) for index in range(self.rank * k, (self.rank + 1) * k)]

    def largest_micro_batch(self, global_size: int) -> int:
        """Images of the largest micro-batch of any rank: what one GPU holds at once in training."""
        every = cut_points(global_size, self.chunks, self.batchnorm_group)
        return max(b - a for a, b in itertools.pairwise(every))

    def share(self, total: int) -> slice:
        """This rank's part of `total` images cut evenly over the ranks (validation: no groups)."""
        every = cut_points(total, self.world_size, None)
        return slice(every[self.rank], every[self.rank + 1])

    def shard(self, global_size: int) -> slice:
        """This rank's contiguous part of a global batch: the union of its micro-batches."""
        micro = self.micro_batches(global_size)
        return slice(micro[0].start, micro[-1].stop)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def cut_points(global_size: int, chunks: int, group: int | None) -> list[int]:
    """The chunks + 1 boundaries that cut `global_size` images into `chunks` runs of whole
    `group`-image units (the last unit shorter when group does not divide the size), the runs'
    unit counts differing by at most one, the longer runs first. dra.gpu_plan plans with the same
    rule (`micro_batch_images`)."""
    unit = group or 1
    units = math.ceil(global_size / unit)
    base, extra = divmod(units, chunks)
    return [min(global_size, (index * base + min(index, extra)) * unit) for index in range(chunks + 1)]


def init_distributed(accumulation_steps: int = 1, batchnorm_group: int | None = None) -> DistributedContext:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=device, accumulation_steps=accumulation_steps,
                              batchnorm_group=batchnorm_group)


def wrap_for_training(module: nn.Module, context: DistributedContext) -> nn.Module:
    if not context.enabled:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
