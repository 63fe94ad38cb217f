"""What one training graph keeps alive per image: the input of the GPU memory model (dra.gpu_plan).

Autograd keeps, between a forward and its backward, the tensors that the backward needs. Their
bytes grow linearly with the batch; the weights (and bf16 copies of them) do not. The bytes saved
for backward by one graph (classifier features plus DRA head) are counted with
torch.autograd.graph.saved_tensors_hooks, each storage once, at two batch sizes: the difference
divided by the difference of the batch sizes is the per-image cost, free of every per-batch constant.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def saved_for_backward_bytes(forward) -> int:
    """Bytes of the distinct storages autograd saves while `forward()` runs."""
    seen: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[(tensor.device.type, storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    del out
    return sum(seen.values())


def saved_bytes_per_image(model: nn.Module, head: nn.Module | None, image_size: int, bf16: bool,
                          channels_last: bool, device: torch.device, batches: tuple[int, int] = (2, 4)) -> float:
    """Bytes saved for backward per image by one train-mode pass of `model` (and `head` on its features)."""
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    generator = torch.Generator().manual_seed(0)
    counted = []
    for batch in batches:
        images = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)
        images = images.contiguous(memory_format=memory_format)

        def forward(images=images):
            with autocast():
                logits, features = model.forward_features(images)
                return logits, head(features) if head is not None else None

        counted.append(saved_for_backward_bytes(forward))
    return (counted[1] - counted[0]) / (batches[1] - batches[0])
