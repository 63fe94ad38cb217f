"""DM-AT's 'base' augmentation on a batch tensor (DM-AT core/data/cifar10s.py, cifar100s.py).

Random crop of the size of the image after zero padding of 4 on each side, horizontal flip
with probability 0.5, and for CIFAR-100 a random rotation in [-15, 15] degrees (nearest, zero
fill, about the centre: torchvision's RandomRotation defaults), applied in that order as in
torchvision's Compose. All randomness comes from an explicit generator, so a resumed run
draws exactly what an uninterrupted one would. Training and the noisy classifier (dra.diffusion)
augment their batches with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_crop_flip_rotate(images: torch.Tensor, generator: torch.Generator, crop_padding: int = 4,
                            hflip: bool = True, rotate_degrees: float = 0.0) -> torch.Tensor:
    """images: (B, C, H, W) in [0, 1]; the random draws are taken on the generator's device."""
    batch, _, height, width = images.shape
    out = images
    if crop_padding > 0:
        padded = F.pad(images, (crop_padding,) * 4)
        top = torch.randint(2 * crop_padding + 1, (batch,), generator=generator).to(images.device)
        left = torch.randint(2 * crop_padding + 1, (batch,), generator=generator).to(images.device)
        rows = (top[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        sample = torch.arange(batch, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[sample, channel, rows, cols]
    if hflip:
        flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if rotate_degrees > 0:
        angle = (torch.rand(batch, generator=generator) * 2.0 - 1.0) * math.radians(rotate_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        # affine_grid works in coordinates normalized per axis; the aspect factors keep the
        # rotation rigid in pixels for non-square images.
        aspect = width / height
        theta = torch.stack([torch.stack([cos, -sin / aspect, zero], 1),
                             torch.stack([sin * aspect, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(images.device, images.dtype), list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.contiguous()
