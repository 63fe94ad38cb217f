"""LightningDiT (Yao et al. 2025), the ImageNet 256x256 latent diffusion transformer, written here.

Module names, parameter shapes and the forward math follow hustvl/LightningDiT
models/lightningdit.py (read at 2725fed; docs/sources.md), so the released checkpoints
(``lightningdit-xl-imagenet256-{64,800}ep.pt``: a dict with 'model', 'ema', 'opt', 'config')
load by name with ``torch.load(weights_only=True)``. Only the inference path is here: no
label dropout, no gradient checkpointing, no torch.compile.

Conventions (transport/path.py ICPlan): the time t runs from 0 (pure noise) to 1 (clean data),
x_t = t * x_data + (1 - t) * noise, the network predicts the velocity x_data - noise, and t
enters the sinusoidal embedding unscaled. Class ``num_classes`` (1000) is the null class used
for classifier-free guidance.

The released XL/1 model: ``LightningDiT(**LIGHTNINGDIT_XL_1)``. Every size is an argument, so
tests build small random instances with the same structure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml + LightningDiT_XL_1
#: (that config and models/lightningdit.py): 256x256 images -> VA-VAE f16d32 latents 16x16x32 -> 256 tokens.
LIGHTNINGDIT_XL_1: dict[str, Any] = dict(
    input_size=16, patch_size=1, in_channels=32, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0,
    num_classes=1000, class_dropout_prob=0.1, learn_sigma=False, use_qknorm=False, use_swiglu=True,
    use_rope=True, use_rmsnorm=True, wo_shift=False,
)


class CheckpointError(ValueError):
    """A LightningDiT / VA-VAE checkpoint file is missing, unreadable or does not fit the model."""


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (the release's RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class Modulate(nn.Module):
    """AdaLN modulation ``x * (1 + scale) + shift`` (shift None when wo_shift).

    A module rather than a function so a hook can see exactly the normalized hidden state the
    modulation reads (the representation extractor does, dra.diffusion.lightningdit_features).
    """

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
        out = x * (1 + scale.unsqueeze(1))
        return out if shift is None else out + shift.unsqueeze(1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotation by 90 degrees of each adjacent pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class VisionRoPE(nn.Module):
    """2-D rotary position embedding over a square token grid (EVA-02's fast variant).

    The head dimension is split in two halves: the first rotates with the token's row, the
    second with its column, each with ``dim // 2`` frequencies theta^(-2k/dim) repeated for
    the two members of a pair. ``freqs_cos``/``freqs_sin`` are (grid^2, 2 * dim) buffers and
    are part of the release's state dict.
    """

    def __init__(self, dim: int, grid: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        angles = torch.arange(grid).float()[:, None] * freqs[None]          # (grid, dim/2)
        angles = angles.repeat_interleave(2, dim=-1)                         # (grid, dim)
        rows = angles[:, None, :].expand(grid, grid, dim)
        cols = angles[None, :, :].expand(grid, grid, dim)
        both = torch.cat([rows, cols], dim=-1).reshape(grid * grid, 2 * dim)
        self.register_buffer("freqs_cos", both.cos())
        self.register_buffer("freqs_sin", both.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.freqs_cos + _rotate_pairs(x) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, use_rmsnorm: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        norm = (lambda: RMSNorm(self.head_dim)) if use_rmsnorm else (lambda: nn.LayerNorm(self.head_dim))
        self.q_norm = norm() if qk_norm else nn.Identity()
        self.k_norm = norm() if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: VisionRoPE | None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class SwiGLUFFN(nn.Module):
    """w3(silu(a) * b) with (a, b) = halves of w12(x); names as in the release (w12, w3)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class GeluMlp(nn.Module):
    """timm's Mlp (fc1, GELU-tanh, fc2), used by the release when use_swiglu is off."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class LightningDiTBlock(nn.Module):
    """x += gate_msa * Attn(modulate(norm1(x))); x += gate_mlp * MLP(modulate(norm2(x)))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, use_qknorm: bool, use_swiglu: bool,
                 use_rmsnorm: bool, wo_shift: bool):
        super().__init__()
        if use_rmsnorm:
            self.norm1, self.norm2 = RMSNorm(hidden_size), RMSNorm(hidden_size)
        else:
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, use_qknorm, use_rmsnorm)
        mlp_hidden = int(hidden_size * mlp_ratio)
        # SwiGLU keeps the parameter count of the 4x GELU MLP with 2/3 of its width (3072 for XL).
        self.mlp = SwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden)) if use_swiglu else GeluMlp(hidden_size, mlp_hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size))
        self.modulate_msa = Modulate()
        self.modulate_mlp = Modulate()

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp); shifts None when wo_shift."""
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            return None, scale_msa, gate_msa, None, scale_mlp, gate_mlp
        return tuple(self.adaLN_modulation(c).chunk(6, dim=1))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: VisionRoPE | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa.unsqueeze(1) * self.attn(self.modulate_msa(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp.unsqueeze(1) * self.mlp(self.modulate_mlp(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool):
        super().__init__()
        self.norm_final = (RMSNorm(hidden_size) if use_rmsnorm
                           else nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.modulate = Modulate()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(self.modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """Conv2d(in, hidden, k=p, s=p) and flatten to (B, tokens, hidden) row-major (timm's PatchEmbed)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid = input_size // patch_size
        self.num_patches = self.grid ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """MLP over the [cos, sin] embedding of t with periods up to 10000 (DiT's; t used unscaled)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return F.pad(embedding, (0, dim % 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table; with class dropout in training it has one extra row, the null class."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """(grid^2, dim) fixed position embedding of MAE/DiT, row-major tokens.

    The first dim/2 channels encode the token's column, the last dim/2 its row (the release
    builds the grid with meshgrid(w, h)); each half is [sin(pos * w_k), cos(pos * w_k)] with
    w_k = 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"hidden_size {dim} must be divisible by 4 for the 2-D sin-cos embedding")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")
    return np.concatenate([encode(cols), encode(rows)], axis=1)


class LightningDiT(nn.Module):
    """``net(x, t, y) -> velocity`` for latents x (B, C, H, W), t (B,) in [0, 1], labels y (B,)."""

    def __init__(self, input_size: int = 16, patch_size: int = 1, in_channels: int = 32, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 class_dropout_prob: float = 0.1, learn_sigma: bool = False, use_qknorm: bool = False,
                 use_swiglu: bool = True, use_rope: bool = True, use_rmsnorm: bool = True, wo_shift: bool = False):
        super().__init__()
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           num_classes=num_classes, class_dropout_prob=class_dropout_prob, learn_sigma=learn_sigma,
                           use_qknorm=use_qknorm, use_swiglu=use_swiglu, use_rope=use_rope, use_rmsnorm=use_rmsnorm,
                           wo_shift=wo_shift)
        self.input_size = input_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_classes = num_classes
        self.null_class = num_classes if class_dropout_prob > 0 else None
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # A parameter (not a buffer) like the release's, so it is part of the state dict; never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        # RoPE over half of each head's dimension per axis (release: dim = hidden // heads // 2).
        self.feat_rope = VisionRoPE(hidden_size // num_heads // 2, self.x_embedder.grid) if use_rope else None
        self.blocks = nn.ModuleList([
            LightningDiTBlock(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift)
            for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The release's initialization (xavier linears, adaLN-Zero), so a random net is a valid stand-in."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.data.copy_(torch.from_numpy(
                sincos_pos_embed_2d(self.hidden_size, self.x_embedder.grid)).float().unsqueeze(0))
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for param in (*self.final_layer.adaLN_modulation[-1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(param)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, T, D), conditioning c = t_emb + y_emb (B, D))."""
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"LightningDiT expects latents (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        return tokens, self.t_embedder(t) + self.y_embedder(y)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c, grid = self.patch_size, self.out_channels, self.x_embedder.grid
        x = x.reshape(x.shape[0], grid, grid, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, grid * p, grid * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tokens, c = self.embed(x, t, y)
        for block in self.blocks:
            tokens = block(tokens, c, self.feat_rope)
        out = self.unpatchify(self.final_layer(tokens, c))
        return out[:, : self.in_channels] if self.learn_sigma else out


def count_parameters(config: dict[str, Any]) -> int:
    """Parameters of ``LightningDiT(**config)`` built on the meta device (no memory is used)."""
    with torch.device("meta"):
        net = LightningDiT(**config)
    return sum(p.numel() for p in net.parameters())


def load_torch_file(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint {path} does not exist; download it (config.yaml's "
                              "diffusion_models lists "
                              "its Hugging Face files) and point the config at it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated download or a foreign file: say which file
        raise CheckpointError(f"{what} checkpoint {path} cannot be read by torch.load(weights_only=True) "
                              f"({type(error).__name__}: {error}); download it again") from error


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """load_state_dict(strict) with one message listing missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{what} checkpoint {path} does not fit the configured model: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, shape mismatches "
            f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in mismatched[:3]]}; check the model config "
            "(e.g. depth, hidden_size, use_swiglu, use_rope) against the checkpoint")
    module.load_state_dict(state, strict=True)


def load_lightningdit(path: str | Path, config: dict[str, Any] | None = None) -> LightningDiT:
    """The released checkpoint (its 'ema' weights if present, else 'model', else a bare state dict)."""
    checkpoint = load_torch_file(path, "LightningDiT")
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"LightningDiT checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    state = checkpoint.get("ema", checkpoint.get("model", checkpoint))
    net = LightningDiT(**(config or LIGHTNINGDIT_XL_1))
    load_state_dict_strict(net, state, path, "LightningDiT")
    return net.eval().requires_grad_(False)
