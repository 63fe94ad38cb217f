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
"""

from __future__ import annotations

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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def micro_batches(self, global_size: int) -> list[slice]:
        """This rank's micro-batches as slices of the global batch: chunks rank*k ... rank*k + k - 1
        of the global batch cut into world_size * k chunks whose sizes differ by at most one."""
        chunks, k = self.world_size * self.accumulation_steps, self.accumulation_steps
        base, extra = divmod(global_size, chunks)

        def chunk(index: int) -> slice:
            start = index * base + min(index, extra)
            return slice(start, start + base + (1 if index < extra else 0))

        return [chunk(index) for index in range(self.rank * k, (self.rank + 1) * k)]

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


def init_distributed(accumulation_steps: int = 1) -> DistributedContext:
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
    return DistributedContext(rank=rank, world_size=world_size, device=device, accumulation_steps=accumulation_steps)


def wrap_for_training(module: nn.Module, context: DistributedContext) -> nn.Module:
    if not context.enabled:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
