"""LightningDiT-XL/1 and the VA-VAE f16d32 tokenizer (hustvl/LightningDiT): sizes, release key names,
checkpoint loading, and known answers for the position encodings."""

import math

import numpy as np
import pytest
import torch

from dra.diffusion.lightningdit import (LIGHTNINGDIT_XL_1, CheckpointError, LightningDiT, TimestepEmbedder,
                                        VisionRoPE, count_parameters, load_lightningdit, sincos_pos_embed_2d)
from dra.diffusion.vavae import VAVAE, VAVAE_F16D32, load_latent_stats, load_vavae, to_uint8_hwc

torch.set_num_threads(1)

TINY_DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
TINY_VAE = dict(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)


def meta_state_shapes(module_class, config):
    with torch.device("meta"):
        module = module_class(**config)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def test_xl1_parameter_count_follows_the_architecture():
    # LightningDiT's 800ep_cfg.yaml: depth 28, hidden 1152, 16 heads, patch 1, 32 latent channels, 256 tokens,
    # SwiGLU hidden int(2/3 * 4608) = 3072, RMSNorm weights, 6-way adaLN, 1000 classes + null.
    d, c, tokens, freq, hidden, depth = 1152, 32, 256, 256, 3072, 28
    embed = (c * d + d) + tokens * d + (freq * d + d + d * d + d) + 1001 * d
    block = (2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 2 * hidden + 2 * hidden) + (hidden * d + d)
             + (d * 6 * d + 6 * d))
    final = d + (d * c + c) + (d * 2 * d + 2 * d)
    assert int(2 / 3 * 4 * d) == hidden
    assert count_parameters(LIGHTNINGDIT_XL_1) == embed + depth * block + final == 675_256_736  # DiT-XL's 675M


# Key names and shapes read from hustvl/LightningDiT models/lightningdit.py (2725fed) for the XL/1 config.
RELEASE_DIT_KEYS = {
    "pos_embed": (1, 256, 1152),
    "x_embedder.proj.weight": (1152, 32, 1, 1), "x_embedder.proj.bias": (1152,),
    "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.2.weight": (1152, 1152),
    "y_embedder.embedding_table.weight": (1001, 1152),
    "feat_rope.freqs_cos": (256, 72), "feat_rope.freqs_sin": (256, 72),
    "blocks.0.norm1.weight": (1152,), "blocks.0.norm2.weight": (1152,),
    "blocks.0.attn.qkv.weight": (3456, 1152), "blocks.0.attn.qkv.bias": (3456,),
    "blocks.0.attn.proj.weight": (1152, 1152), "blocks.0.attn.proj.bias": (1152,),
    "blocks.0.mlp.w12.weight": (6144, 1152), "blocks.0.mlp.w12.bias": (6144,),
    "blocks.0.mlp.w3.weight": (1152, 3072), "blocks.0.mlp.w3.bias": (1152,),
    "blocks.0.adaLN_modulation.1.weight": (6912, 1152), "blocks.0.adaLN_modulation.1.bias": (6912,),
    "blocks.27.adaLN_modulation.1.weight": (6912, 1152),
    "final_layer.norm_final.weight": (1152,), "final_layer.linear.weight": (32, 1152),
    "final_layer.linear.bias": (32,), "final_layer.adaLN_modulation.1.weight": (2304, 1152),
}


def test_xl1_state_dict_has_the_release_key_names():
    shapes = meta_state_shapes(LightningDiT, LIGHTNINGDIT_XL_1)
    for key, shape in RELEASE_DIT_KEYS.items():
        assert shapes.get(key) == shape, key
    # 10 embedding/rope tensors + 12 per block + 5 in the final layer, nothing else.
    assert len(shapes) == 10 + 28 * 12 + 5
    assert not any("q_norm" in key or "modulate" in key for key in shapes)  # QK-norm off; hooks are parameter-free


# tokenizer/autoencoder.py (2725fed) with the vavae_f16d32.yaml ddconfig.
RELEASE_VAE_KEYS = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.0.block.0.norm1.weight": (128,),
    "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
    "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
    "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
    "encoder.conv_out.weight": (64, 512, 3, 3),
    "quant_conv.weight": (64, 64, 1, 1), "post_quant_conv.weight": (32, 32, 1, 1),
    "decoder.conv_in.weight": (512, 32, 3, 3),
    "decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
    "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
    "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
    "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}


def test_vavae_f16d32_state_dict_has_the_release_key_names():
    shapes = meta_state_shapes(VAVAE, VAVAE_F16D32)
    for key, shape in RELEASE_VAE_KEYS.items():
        assert shapes.get(key) == shape, key
    assert "encoder.down.4.downsample.conv.weight" not in shapes and "decoder.up.0.upsample.conv.weight" not in shapes
    assert not any(key.startswith("encoder.down.3.attn") for key in shapes)  # attention only at 16x16
    with torch.device("meta"):
        vae = VAVAE(**VAVAE_F16D32)
    assert vae.latent_size == 16 and vae.downsample_factor == 16  # 256 / 16 -> 16x16x32 latents
    with torch.device("meta"):  # shapes through the full-size tokenizer and XL/1, nothing allocated
        dit = LightningDiT(**LIGHTNINGDIT_XL_1)
        mean, logvar = vae.encode_moments(torch.empty(2, 3, 256, 256))
        assert mean.shape == logvar.shape == (2, 32, 16, 16)
        assert dit(mean, torch.empty(2), torch.zeros(2, dtype=torch.long)).shape == (2, 32, 16, 16)
        assert vae.decode(mean).shape == (2, 3, 256, 256)


def test_sincos_pos_embed_known_answer():
    dim, grid = 8, 3
    table = sincos_pos_embed_2d(dim, grid)
    omega = [1.0, 1.0 / 100]  # 10000^(-k / (dim/4)), k = 0, 1
    row, col = 2, 1
    token = table[row * grid + col]
    expected = ([math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
                + [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega])
    np.testing.assert_allclose(token, expected, rtol=1e-12)


def test_rope_rotates_by_relative_position():
    rope = VisionRoPE(dim=4, grid=4)  # head dim 8: 4 channels rotate with the row, 4 with the column
    assert rope.freqs_cos.shape == (16, 8)
    # token (row 0, col 1): the column half rotates by 1 * theta^0 rad on its first pair
    torch.testing.assert_close(rope.freqs_cos[1, 4:6], torch.full((2,), math.cos(1.0)))
    torch.manual_seed(0)
    q, k = torch.randn(8).expand(16, 8), torch.randn(8).expand(16, 8)
    rq, rk = rope(q), rope(k)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    dots = (rq[:, None] * rk[None]).sum(-1)  # [query token, key token]
    at = lambda r, c: r * 4 + c  # noqa: E731
    torch.testing.assert_close(dots[at(0, 0), at(1, 2)], dots[at(2, 1), at(3, 3)])


def test_timestep_embedding_at_zero_is_cos_one_sin_zero():
    embedding = TimestepEmbedder.sinusoidal(torch.tensor([0.0, 0.8]), 256)
    torch.testing.assert_close(embedding[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    torch.testing.assert_close(embedding[1, 0], torch.tensor(math.cos(0.8)))  # t used unscaled (no x1000)


def test_adaln_zero_init_gives_zero_velocity_and_shapes():
    torch.manual_seed(0)
    net = LightningDiT(**TINY_DIT)
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.9]), torch.tensor([3, 10]))
    assert out.shape == (2, 4, 8, 8) and torch.count_nonzero(out) == 0  # final layer zero-initialized
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\)"):
        net(torch.randn(2, 4, 16, 16), torch.tensor([0.1, 0.9]), torch.tensor([3, 10]))


def randomized(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return module


def test_dit_checkpoint_round_trip_prefers_ema(tmp_path):
    model, ema = randomized(LightningDiT(**TINY_DIT)), LightningDiT(**TINY_DIT)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": {"state": {}, "param_groups": []},
                "config": {"model": {"model_type": "tiny"}}}, path)
    loaded = load_lightningdit(path, TINY_DIT)
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.7]), torch.tensor([1, 2])
    torch.save({"model": model.state_dict()}, path)
    torch.testing.assert_close(load_lightningdit(path, TINY_DIT)(x, t, y), model(x, t, y))


def test_dit_checkpoint_errors_name_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lightningdit(path, TINY_DIT)
    torch.save({"ema": LightningDiT(**dict(TINY_DIT, depth=2)).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"ckpt.pt does not fit.*missing keys \['blocks.2"):
        load_lightningdit(path, TINY_DIT)
    path.write_bytes(b"truncated download")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_lightningdit(path, TINY_DIT)


def test_vae_checkpoint_drops_training_only_keys_and_round_trips(tmp_path):
    vae = randomized(VAVAE(**TINY_VAE))
    state = dict(vae.state_dict())
    state.update({"loss.discriminator.main.0.weight": torch.zeros(3),
                  "foundation_model.model.cls_token": torch.zeros(3),
                  "linear_proj.weight": torch.zeros(3)})
    path = tmp_path / "vavae.pt"
    torch.save({"state_dict": state, "epoch": 10}, path)
    loaded = load_vavae(path, TINY_VAE)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = loaded.encode_moments(images)
    assert mean.shape == logvar.shape == (2, 4, 8, 8)
    torch.testing.assert_close(mean, vae.encode_moments(images)[0])
    assert loaded.decode(mean).shape == (2, 3, 16, 16)


def test_latent_stats_normalize_like_the_release(tmp_path):
    mean, std = torch.randn(1, 4, 1, 1), torch.rand(1, 4, 1, 1) + 0.5
    torch.save({"mean": mean, "std": std}, tmp_path / "latents_stats.pt")
    stats = load_latent_stats(tmp_path / "latents_stats.pt", channels=4)
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(stats.normalize(z), (z - mean) / std)
    torch.testing.assert_close(stats.denormalize(stats.normalize(z)), z)
    with pytest.raises(CheckpointError, match="32"):
        load_latent_stats(tmp_path / "latents_stats.pt", channels=32)


def test_uint8_conversion_truncates_like_the_release():
    pixels = to_uint8_hwc(torch.tensor([-1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5))
    assert pixels[0, 0, :, 0].tolist() == [0, 128, 255, 255, 255]  # 0.5 -> 0; 255.37 -> 255; clamp
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 5, 3)
