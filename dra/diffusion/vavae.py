"""VA-VAE f16d32, LightningDiT's tokenizer: an LDM AutoencoderKL, written here.

Module names and the math follow hustvl/LightningDiT tokenizer/autoencoder.py and
tokenizer/configs/vavae_f16d32.yaml (read at 2725fed; docs/sources.md): embed_dim 32,
ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks per level, attention at resolution 16, images
in [-1, 1]. The released ``vavae-imagenet256-f16d32-dinov2.pt`` is a Lightning checkpoint
whose 'state_dict' also holds the training-only DINOv2 ``foundation_model.*``, its
``linear_proj.*`` and the ``loss.*`` discriminator; only encoder/decoder/quant convs are kept.

Latent statistics (``latents_stats.pt``: {'mean', 'std'}, each (1, 32, 1, 1)) normalize the
latents the DiT sees: z_dit = (z - mean) / std * multiplier, multiplier 1.0 for f16d32
(datasets/img_latent_dataset.py, inference.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dra.diffusion.lightningdit import CheckpointError, load_torch_file, load_state_dict_strict

#: tokenizer/configs/vavae_f16d32.yaml ddconfig (hustvl/LightningDiT @ 2725fed).
VAVAE_F16D32: dict[str, Any] = dict(embed_dim=32, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                    attn_resolutions=(16,), resolution=256, in_channels=3, out_ch=3)

#: Prefixes of the state-dict keys of the autoencoder itself inside the release checkpoint.
AUTOENCODER_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with 1x1-conv q, k, v and output projection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (conv(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, as the release
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom (LDM's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (after each block, maybe empty) and a resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[index](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 resolution: int, in_channels: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        current, block_in = resolution, ch
        for level, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
                if current in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            stage = _Level(blocks, attns)
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                current //= 2
            self.down.append(stage)
        self.mid = _Middle(block_in)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)  # double_z: mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 resolution: int, out_ch: int, z_channels: int):
        super().__init__()
        block_in = ch * ch_mult[-1]
        current = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in)
        levels: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * ch_mult[level]))
                block_in = ch * ch_mult[level]
                if current in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            stage = _Level(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in)
                current *= 2
            levels.insert(0, stage)  # up[0] is the full-resolution level, as in the release
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class LatentStats:
    """Channel-wise latent mean/std (latents_stats.pt) and the multiplier (1.0 for f16d32)."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor   # (1, C, 1, 1)
    multiplier: float = 1.0

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z)) / self.std.to(z) * self.multiplier

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z) / self.multiplier + self.mean.to(z)


def load_latent_stats(path: str | Path, channels: int = 32, multiplier: float = 1.0) -> LatentStats:
    stats = load_torch_file(path, "latent statistics")
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise CheckpointError(f"latent statistics {path} must be a dict with 'mean' and 'std' (latents_stats.pt "
                              "of hustvl/vavae-imagenet256-f16d32-dinov2)")
    mean, std = (torch.as_tensor(stats[key], dtype=torch.float32).reshape(1, -1, 1, 1) for key in ("mean", "std"))
    if mean.shape[1] != channels or std.shape[1] != channels:
        raise CheckpointError(f"latent statistics {path} have {mean.shape[1]} channels, the tokenizer makes {channels}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"latent statistics {path} hold non-finite values or a non-positive std")
    return LatentStats(mean, std, multiplier)


class VAVAE(nn.Module):
    """AutoencoderKL: ``encode_moments(images in [-1, 1]) -> (mean, logvar)``, ``decode(z) -> [-1, 1]``."""

    def __init__(self, embed_dim: int = 32, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), resolution: int = 256,
                 in_channels: int = 3, out_ch: int = 3):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                           attn_resolutions=tuple(attn_resolutions), resolution=resolution,
                           in_channels=in_channels, out_ch=out_ch)
        self.embed_dim = embed_dim
        self.resolution = resolution
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, in_channels, embed_dim)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, out_ch, embed_dim)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample_factor

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20] like LDM's DiagonalGaussianDistribution)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            raise ValueError(f"VA-VAE encodes (B, 3, {self.resolution}, {self.resolution}) images in [-1, 1], "
                             f"got {tuple(x.shape)}")
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8 HWC: clamp(127.5 x + 128, 0, 255) truncated, as the release."""
    pixels = torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def load_vavae(path: str | Path, config: dict[str, Any] | None = None) -> VAVAE:
    """The released tokenizer (Lightning 'state_dict' or a bare one); training-only keys are dropped."""
    checkpoint = load_torch_file(path, "VA-VAE")
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"VA-VAE checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    state = checkpoint.get("state_dict", checkpoint)
    state = {key: value for key, value in state.items() if key.startswith(AUTOENCODER_PREFIXES)}
    vae = VAVAE(**(config or VAVAE_F16D32))
    load_state_dict_strict(vae, state, path, "VA-VAE")
    return vae.eval().requires_grad_(False)
