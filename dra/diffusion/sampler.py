"""EDM's deterministic Heun sampler and the synthetic-data generation built on it.

Sigma schedule, float64 latents and the Euler step with a Heun correction on all but the
last step follow NVlabs/edm generate.py; the pixel conversion follows DM-AT (edm/generate.py).
Every image has its own random generator, so image i is the same whatever the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dra.diffusion.edm import EDMPrecond, one_hot_labels
from dra.diffusion.shards import row_batches, run_sharded_job


def edm_sigma_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    rho: float = 7.0) -> torch.Tensor:
    """t_0 > ... > t_{N-1} on EDM's rho-spaced grid, then t_N = 0 (float64, length N+1)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (the grid needs both ends), got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    steps = (hi + i / (num_steps - 1) * (lo - hi)) ** rho
    return torch.cat([steps, torch.zeros(1, dtype=torch.float64)])


def seeded_latents(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal latents, one torch.Generator per seed (EDM's per-sample seeding)."""
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    for row, seed in enumerate(seeds):
        out[row] = torch.randn(*shape, generator=torch.Generator().manual_seed(int(seed)))
    return out


@torch.no_grad()
def edm_heun_sample(net: EDMPrecond, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                    num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    rho: float = 7.0) -> torch.Tensor:
    """Deterministic 2nd-order sampler: returns float64 images in EDM data space (about [-1, 1]).

    ``class_labels`` are one-hot rows (B, label_dim) or None; NFE = 2 * num_steps - 1.
    """
    sigma_min = max(sigma_min, float(net.sigma_min))
    sigma_max = min(sigma_max, float(net.sigma_max))
    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho).to(latents.device)
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        slope = (x_cur - net(x_cur, t_cur, class_labels).to(torch.float64)) / t_cur
        x_next = x_cur + (t_next - t_cur) * slope
        if i < num_steps - 1:
            slope_next = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * slope + 0.5 * slope_next)
    return x_next


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """EDM data space -> uint8 HWC: clip(x * 127.5 + 128, 0, 255) truncated (DM-AT edm/generate.py)."""
    pixels = (images * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def generation_plan(n_per_class: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, latent seeds) of every image: class-major order, seeds re-used for each class.

    DM-AT generated class c with seeds 0..n-1 for every c and concatenated the classes
    (DM-AT edm/generate.py); image i is class i // n_per_class with seed ``seed + i % n_per_class``.
    """
    index = np.arange(n_per_class * num_classes, dtype=np.int64)
    return index // n_per_class, seed + index % n_per_class


def generate_synthetic(net: EDMPrecond, out_store: str | Path, n_per_class: int, num_classes: int,
                       num_steps: int, batch_size: int = 256, seed: int = 0, shard_size: int | None = None,
                       meta: dict | None = None, state_dir: str | Path | None = None) -> Path:
    """Sample ``n_per_class`` images per class into an ImageStore, resumable after a kill.

    Finished shards wait in ``state_dir`` (default ``<out_store>.state/``); the store is assembled (atomically) only
    when all are there, and the state folder is removed afterwards.
    """
    from dra.data.store import ImageStoreWriter

    if net.label_dim not in (0, num_classes):
        raise ValueError(f"the diffusion model has label_dim {net.label_dim}, but {num_classes} classes were requested")
    out_store = Path(out_store)
    labels, seeds = generation_plan(n_per_class, num_classes, seed)
    n = len(labels)
    resolution, channels = net.img_resolution, net.img_channels
    if channels != 3:
        raise ValueError(f"image stores hold RGB; the diffusion model makes {channels} channels")

    def compute(start: int, stop: int, advance) -> dict[str, np.ndarray]:
        shard_images = []
        for lo, hi in row_batches(start, stop, batch_size):
            latents = seeded_latents(seeds[lo:hi].tolist(), (channels, resolution, resolution))
            class_labels = one_hot_labels(torch.from_numpy(labels[lo:hi]), net.label_dim)
            shard_images.append(to_uint8_hwc(edm_heun_sample(net, latents, class_labels, num_steps)))
            advance(hi - lo)
        return {"images": np.concatenate(shard_images)}

    store_meta = dict(meta or {}, source="edm_heun_sampler", num_steps=num_steps, seed=seed, n_per_class=n_per_class)

    def write_output(shards) -> None:
        with ImageStoreWriter(out_store, n, resolution, resolution, num_classes, meta=store_meta) as writer:
            for start, arrays in shards:
                writer.write(start, arrays["images"], labels[start:start + len(arrays["images"])])

    run_sharded_job(out_store, n, shard_size or batch_size * 16,
                    dict(n_per_class=n_per_class, num_classes=num_classes, num_steps=num_steps, seed=seed,
                         resolution=resolution),
                    compute, write_output, "sampling", state_dir)
    return out_store
