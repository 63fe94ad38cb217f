"""Synthetic ImageNet 256x256 from LightningDiT + VA-VAE with the release's Euler ODE sampler.

The sampler of hustvl/LightningDiT (@ 2725fed; its settings, from
configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml, live in config.yaml under
``diffusion_models.<model>.sampling`` and ``datasets.<d>.synthetic.<set>.generate.num_steps``):
Euler on the probability-flow ODE of the linear path from t = 0 (noise) to t = 1 (data) over
a grid of ``num_steps`` times (torchdiffeq 'euler' on that grid: num_steps - 1 updates),
each time warped by the timestep shift s, t' = s t / (1 + (s - 1) t), which for s < 1 spends more
steps near the noise end. Classifier-free guidance with ``cfg_scale`` only where
t >= ``cfg_interval_start``, and, as the release does for reproducibility, only on the first
``cfg_channels`` latent channels (models/lightningdit.py forward_with_cfg).
Latents are denormalized with latents_stats and decoded; pixels are
uint8(clamp(127.5 x + 128, 0, 255)) (tokenizer/vavae.py decode_to_images).

Every image has its own seeded noise and a fixed class (class-major plan of
dra.diffusion.sampler.generation_plan), so image i does not depend on the batch it ran in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dra.diffusion.lightningdit import LightningDiT
from dra.diffusion.sampler import generation_plan, seeded_latents
from dra.diffusion.shards import row_batches, run_sharded_job
from dra.diffusion.vavae import VAVAE, LatentStats, to_uint8_hwc

def shifted_time_grid(num_steps: int, timestep_shift: float) -> torch.Tensor:
    """linspace(0, 1, num_steps) warped by t' = s t / (1 + (s - 1) t) (no warp when s <= 0), float32."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (the grid needs both ends), got {num_steps}")
    grid = torch.linspace(0, 1, num_steps)
    if timestep_shift > 0:
        grid = timestep_shift * grid / (1 + (timestep_shift - 1) * grid)
    return grid


@torch.no_grad()
def euler_sample(dit: LightningDiT, noise: torch.Tensor, labels: torch.Tensor, num_steps: int,
                 timestep_shift: float, cfg_scale: float, cfg_interval_start: float, cfg_channels: int,
                 bf16: bool = False) -> torch.Tensor:
    """Normalized latents at t = 1 from ``noise`` at t = 0 for class ``labels``.

    Guidance (when cfg_scale > 1) evaluates the conditional and the null-class velocity in one
    batch; v = v_cond, with v[:, :cfg_channels] = v_u + scale (v_c - v_u) wherever t >= cfg_interval_start.
    """
    use_cfg = cfg_scale > 1.0
    if use_cfg and dit.null_class is None:
        raise ValueError(
            "classifier-free guidance needs the null class, but this LightningDiT has no class dropout row")
    device = noise.device
    batch = noise.shape[0]
    labels = labels.to(device)
    grid = shifted_time_grid(num_steps, timestep_shift).to(device)
    x = noise.float()
    null = torch.full_like(labels, dit.null_class) if use_cfg else None
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        t_batch = t_cur.expand(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if use_cfg:
                both = dit(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, null])).float()
                velocity, v_uncond = both[:batch], both[batch:]
                if t_cur >= cfg_interval_start:
                    guided = v_uncond[:, :cfg_channels] + cfg_scale * (velocity[:, :cfg_channels]
                                                                       - v_uncond[:, :cfg_channels])
                    velocity = torch.cat([guided, velocity[:, cfg_channels:]], dim=1)
            else:
                velocity = dit(x, t_batch, labels).float()
        x = x + (t_next - t_cur) * velocity
    return x


def part_rows(n: int, index: int, parts: int) -> tuple[int, int]:
    """Rows [first, last) of part ``index`` when n rows are split into ``parts`` near-equal runs."""
    return n * index // parts, n * (index + 1) // parts


@torch.no_grad()
def decode_latents(vae: VAVAE, stats: LatentStats, latents: torch.Tensor, bf16: bool = False) -> np.ndarray:
    """Normalized latents -> uint8 (B, H, W, 3) images."""
    with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=bf16):
        images = vae.decode(stats.denormalize(latents.float()))
    return to_uint8_hwc(images)


def generate_imagenet_synthetic(dit: LightningDiT, vae: VAVAE, stats: LatentStats, out_store: str | Path,
                                n_per_class: int, num_classes: int, num_steps: int, timestep_shift: float,
                                cfg_scale: float, cfg_interval_start: float, cfg_channels: int,
                                batch_size: int = 64, seed: int = 0,
                                shard_size: int | None = None, state_dir: str | Path | None = None,
                                meta: dict | None = None, device: str = "cpu", bf16: bool = False,
                                part: tuple[int, int] = (0, 1)) -> Path:
    """Sample ``n_per_class`` images per class into an ImageStore (H = W = VA-VAE resolution), resumable.

    ``part = (k, parts)`` samples only the k-th of ``parts`` equal runs of rows of the class-major
    plan, so that the set can be sampled by independent jobs and joined afterwards
    (dra.data.store.assemble_image_store); image i is the same whichever job draws it.
    Finished shards wait in ``state_dir`` (default ``<out_store>.state/``); the store is assembled
    atomically once all are there, and the state folder is removed afterwards.
    """
    from dra.data.store import ImageStoreWriter

    if num_classes > dit.num_classes:
        raise ValueError(f"{num_classes} classes requested, the LightningDiT knows {dit.num_classes}")
    if vae.embed_dim != dit.in_channels or vae.latent_size != dit.input_size:
        raise ValueError(f"VA-VAE latents ({vae.embed_dim}x{vae.latent_size}x{vae.latent_size}) do not fit the "
                         f"LightningDiT input ({dit.in_channels}x{dit.input_size}x{dit.input_size})")
    if not 0 < cfg_channels <= dit.in_channels:
        raise ValueError(f"cfg_channels must be in [1, {dit.in_channels}], got {cfg_channels}")
    out_store = Path(out_store)
    labels, seeds = generation_plan(n_per_class, num_classes, seed)
    index, parts = part
    if not 0 <= index < parts:
        raise ValueError(f"part {index} of {parts} does not exist; parts are numbered 0 to {parts - 1}")
    first, last = part_rows(len(labels), index, parts)
    labels, seeds = labels[first:last], seeds[first:last]
    n = len(labels)
    shape = (dit.in_channels, dit.input_size, dit.input_size)
    settings = dict(n_per_class=n_per_class, num_classes=num_classes, num_steps=num_steps,
                    timestep_shift=timestep_shift, cfg_scale=cfg_scale, cfg_interval_start=cfg_interval_start,
                    cfg_channels=cfg_channels, seed=seed, bf16=bf16, part=[index, parts], rows=[first, last])

    def compute(start: int, stop: int, advance) -> dict[str, np.ndarray]:
        shard_images = []
        for lo, hi in row_batches(start, stop, batch_size):
            noise = seeded_latents(seeds[lo:hi].tolist(), shape).to(device)
            latents = euler_sample(dit, noise, torch.from_numpy(labels[lo:hi]), num_steps, timestep_shift,
                                   cfg_scale, cfg_interval_start, cfg_channels, bf16=bf16)
            shard_images.append(decode_latents(vae, stats, latents, bf16=bf16))
            advance(hi - lo)
        return {"images": np.concatenate(shard_images)}

    store_meta = dict(meta or {}, **settings, source="lightningdit_euler_sampler")

    def write_output(shards) -> None:
        with ImageStoreWriter(out_store, n, vae.resolution, vae.resolution, num_classes, meta=store_meta) as writer:
            for start, arrays in shards:
                writer.write(start, arrays["images"], labels[start:start + len(arrays["images"])])

    run_sharded_job(out_store, n, shard_size or batch_size * 16,
                    dict(settings, resolution=vae.resolution, diffusion_model=(meta or {}).get("diffusion_model", "")),
                    compute, write_output, "lightningdit sampling", state_dir)
    return out_store


def generate_from_checkpoints(dit_checkpoint: str | Path, vae_checkpoint: str | Path, latent_stats: str | Path,
                              out_store: str | Path, n_per_class: int, num_classes: int,
                              dit_config: dict | None = None, vae_config: dict | None = None,
                              device: str = "cpu", **sampling) -> Path:
    """Load the released LightningDiT + VA-VAE + latent stats and run generate_imagenet_synthetic."""
    from dra.diffusion.lightningdit import load_lightningdit
    from dra.diffusion.vavae import load_latent_stats, load_vavae

    dit = load_lightningdit(dit_checkpoint, dit_config).to(device)
    vae = load_vavae(vae_checkpoint, vae_config).to(device)
    stats = load_latent_stats(latent_stats, channels=vae.embed_dim)
    meta = {"diffusion_model": str(dit_checkpoint), "tokenizer": str(vae_checkpoint)}
    return generate_imagenet_synthetic(dit, vae, stats, out_store, n_per_class, num_classes, meta=meta,
                                       device=device, **sampling)
