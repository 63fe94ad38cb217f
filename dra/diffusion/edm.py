"""EDM's DDPM++ U-Net (SongUNet) and EDM preconditioning, written for this project.

Module names, parameter shapes and the forward math follow NVIDIA's EDM networks
(NVlabs/edm training/networks.py, train.py) so that the state dicts of the official CIFAR-10
checkpoints and of DM-AT's CIFAR-100 model load by name into these classes. Only the DDPM++
variant is implemented (positional noise embedding, 'standard' encoder and decoder), the one
behind every "-vp" checkpoint the paper uses.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedArchitecture(ValueError):
    """The requested EDM variant is not the DDPM++/EDMPrecond one implemented here."""


def _initial_weight(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(
        f"unknown init mode {mode!r}; use xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal")


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_initial_weight([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(_initial_weight([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """3x3/1x1 convolution with optional 2x up- or downsampling by a separable FIR filter.

    The filter is a buffer only on resampling layers: that is where NVIDIA's state dicts carry
    a ``resample_filter`` entry, so loading by name stays strict.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[int] = (1, 1),
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("Conv2d: up and down are mutually exclusive")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (nn.Parameter(_initial_weight([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
                       if kernel else None)
        self.bias = nn.Parameter(_initial_weight([out_channels], **fans) * init_bias) if kernel and bias else None
        taps = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        taps2d = torch.outer(taps, taps)[None, None] / taps.sum().square()
        if up or down:
            self.register_buffer("resample_filter", taps2d)
        else:
            self.resample_filter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample_filter is not None:
            taps = self.resample_filter.to(x.dtype)
            pad = (taps.shape[-1] - 1) // 2
            if self.up:
                # x4 keeps the mean: a transposed stride-2 conv spreads each pixel over 4.
                x = F.conv_transpose2d(x, taps.mul(4).tile([self.in_channels, 1, 1, 1]),
                                       groups=self.in_channels, stride=2, padding=pad)
            else:
                x = F.conv2d(x, taps.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """DDPM++ residual block: additive embedding bias after norm1, optional single-head attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int = 1, dropout: float = 0.0,
                 skip_scale: float = 1.0, eps: float = 1e-5, resample_filter: Sequence[int] = (1, 1),
                 resample_proj: bool = False, init: dict | None = None, init_zero: dict | None = None,
                 init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = num_heads if attention else 0
        self.dropout = dropout
        self.skip_scale = skip_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(shortcut) if self.skip is not None else shortcut)) * self.skip_scale
        if self.num_heads:
            batch, channels, height, width = x.shape
            heads = self.num_heads
            q, k, v = self.qkv(self.norm2(x)).reshape(batch * heads, channels // heads, 3, height * width).unbind(2)
            # The softmax runs in fp32 whatever the activation dtype (NVlabs/edm networks.py).
            logits = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1]))
            weights = logits.softmax(dim=2).to(q.dtype)
            attended = torch.einsum("nqk,nck->ncq", weights, v)
            x = (self.proj(attended.reshape(batch, channels, height, width)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of the noise level, [cos | sin] halves (SongUNet swaps them)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class SongUNet(nn.Module):
    """DDPM++ U-Net; ``enc``/``dec`` ModuleDicts keyed '<res>x<res>_<role>' as in NVIDIA's code."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        if embedding_type != "positional" or encoder_type != "standard" or decoder_type != "standard":
            raise UnsupportedArchitecture(
                f"SongUNet here implements DDPM++ only (embedding_type='positional', encoder_type='standard', "
                f"decoder_type='standard'); got {embedding_type!r}, {encoder_type!r}, {decoder_type!r} "
                f"(NCSN++ / '-ve' checkpoints are not supported)")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = nn.ModuleDict()
        channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels, kernel=3, **init)
                channels = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True, **block_kwargs)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(channels, model_channels * mult,
                                                                attention=res in attn_resolutions, **block_kwargs)
                channels = model_channels * mult
        skip_channels = [block.out_channels for block in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(channels + skip_channels.pop(), model_channels * mult,
                                                                attention=attention, **block_kwargs)
                channels = model_channels * mult
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(channels, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(channels, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos|sin] -> [sin|cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        hidden = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                hidden = block(x)
            elif name.endswith("aux_conv"):
                x = block(F.silu(hidden))
            else:
                # A skip is concatenated exactly when the channel counts disagree (edm networks.py SongUNet).
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return x


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, labels) with EDM's coefficients (networks.py EDMPrecond)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "SongUNet", **model_kwargs):
        if model_type != "SongUNet":
            raise UnsupportedArchitecture(
                f"EDMPrecond: model_type {model_type!r} is not supported; only 'SongUNet' (DDPM++)")
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = SongUNet(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                              label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for a tensor of noise levels."""
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        # fp16 is a CUDA speed option of NVIDIA's code; this project runs the net in fp32.
        noise_labels = c_noise.flatten().expand(x.shape[0]) if c_noise.numel() == 1 else c_noise.flatten()
        out = self.model(c_in * x, noise_labels, class_labels, augment_labels)
        return c_skip * x + c_out * out.to(torch.float32)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)


def one_hot_labels(labels: torch.Tensor, label_dim: int) -> torch.Tensor | None:
    """Integer class labels -> the float one-hot vectors EDMPrecond expects (None if unconditional)."""
    if label_dim == 0:
        return None
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= label_dim):
        raise ValueError(f"class labels must lie in [0, {label_dim}); got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels, label_dim).to(torch.float32)


#: NVIDIA's CIFAR-10 DDPM++ configuration (NVlabs/edm train.py --arch=ddpmpp), the init kwargs of its EDMPrecond.
CIFAR10_DDPMPP_KWARGS = dict(
    img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
    sigma_data=0.5, model_type="SongUNet", model_channels=128, channel_mult=[2, 2, 2], channel_mult_emb=4,
    num_blocks=4, attn_resolutions=[16], dropout=0.13, label_dropout=0, embedding_type="positional",
    channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1], augment_dim=9,
)
