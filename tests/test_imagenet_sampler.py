"""LightningDiT Euler ODE sampler with the release's settings (LightningDiT configs/) and the resumable
synthetic ImageNet generation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import dra.diffusion.lightningdit_sampler as sampler_module
from dra.data.store import open_image_store
from dra.diffusion.lightningdit import LightningDiT
from dra.diffusion.lightningdit_sampler import (euler_sample, generate_imagenet_synthetic,
                                                shifted_time_grid)
from dra.diffusion.shards import StaleStateError
from dra.diffusion.vavae import VAVAE, LatentStats

torch.set_num_threads(1)

TINY_DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
TINY_VAE = dict(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)


def test_release_settings_are_in_config():
    # lightningdit_xl_vavae_f16d32_800ep_cfg.yaml: Euler, 250 steps, shift 0.3, cfg 6.7 (800ep), interval
    # start 0.125, first 3 channels.
    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    assert config["diffusion_models"]["lightningdit-xl"]["sampling"] == dict(
        timestep_shift=0.3, cfg_scale=6.7, cfg_interval_start=0.125, cfg_channels=3)
    assert config["datasets"]["imagenet"]["synthetic"]["4m"]["generate"]["num_steps"] == 250


def test_shifted_grid_known_values():
    grid = shifted_time_grid(250, 0.3)
    assert grid.shape == (250,) and grid[0] == 0 and grid[-1] == pytest.approx(1.0)
    # t' = s t / (1 + (s - 1) t) at t = 0.5 with s = 0.3: 0.15 / 0.65
    assert shifted_time_grid(3, 0.3)[1] == pytest.approx(0.15 / 0.65)
    assert torch.all(grid[1:] > grid[:-1]) and float((grid < 0.5).float().mean()) > 0.7  # dense near the noise
    torch.testing.assert_close(shifted_time_grid(5, 0.0), torch.linspace(0, 1, 5))


class PointMassFlow(nn.Module):
    """Exact velocity of the linear path when the data is one point d: v(x, t) = (d - x) / (1 - t)."""

    null_class = 10

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x, t, y):
        return (self.target - x) / (1 - t.view(-1, 1, 1, 1))


class ConstantFlow(nn.Module):
    """Velocity 1 for real classes and 0 for the null class, whatever x and t."""

    null_class = 10

    def forward(self, x, t, y):
        return (y != self.null_class).float().view(-1, 1, 1, 1).expand_as(x).clone()


def test_euler_lands_on_a_point_mass_exactly():
    target = torch.randn(1, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    out = euler_sample(PointMassFlow(target), noise, torch.tensor([1, 2]), num_steps=7, timestep_shift=0.3,
                       cfg_scale=1.0, cfg_interval_start=0.125, cfg_channels=3)
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1), rtol=1e-5, atol=1e-5)


def test_guidance_on_first_channels_only_after_the_interval_start():
    grid = shifted_time_grid(20, 0.3).double()
    steps = grid[1:] - grid[:-1]
    guided = steps[grid[:-1] >= 0.125].sum()
    out = euler_sample(ConstantFlow(), torch.zeros(1, 4, 2, 2), torch.tensor([3]), num_steps=20, timestep_shift=0.3,
                       cfg_scale=4.0, cfg_interval_start=0.125, cfg_channels=3)
    # v_c = 1, v_u = 0: guided velocity 0 + 4 (1 - 0) = 4 on channels 0-2 where t >= 0.125, else 1
    assert float(out[0, :3].mean()) == pytest.approx(float(1.0 + 3.0 * guided), rel=1e-5)
    torch.testing.assert_close(out[0, 3], torch.ones(2, 2))


def tiny_parts():
    torch.manual_seed(0)
    dit, vae = LightningDiT(**TINY_DIT), VAVAE(**TINY_VAE)
    with torch.no_grad():
        for p in [*dit.parameters(), *vae.parameters()]:
            if p.requires_grad:
                p.normal_(0, 0.05)
    stats = LatentStats(torch.full((1, 4, 1, 1), 0.1), torch.full((1, 4, 1, 1), 2.0))
    return dit.eval(), vae.eval(), stats


def generate(parts, out, **kwargs):
    dit, vae, stats = parts
    settings = dict(n_per_class=3, num_classes=2, num_steps=4, timestep_shift=0.3, cfg_scale=2.0,
                    cfg_interval_start=0.125,
                    cfg_channels=3, batch_size=2, seed=7, shard_size=2)
    return generate_imagenet_synthetic(dit, vae, stats, out, **{**settings, **kwargs})


def test_generation_is_deterministic_per_seed_and_resumes(tmp_path, counted_calls):
    parts = tiny_parts()
    reference = open_image_store(generate(parts, tmp_path / "ref"))
    assert reference.images.shape == (6, 16, 16, 3) and reference.images.dtype == np.uint8
    assert reference.labels.tolist() == [0, 0, 0, 1, 1, 1] and reference.meta["cfg_scale"] == 2.0
    assert reference.images.std() > 1  # real images, not a constant
    one_by_one = open_image_store(generate(parts, tmp_path / "single", batch_size=1, shard_size=1))
    assert np.abs(one_by_one.images.astype(int) - reference.images.astype(int)).max() <= 1
    other_seed = open_image_store(generate(parts, tmp_path / "other", seed=8))
    assert np.abs(other_seed.images.astype(int) - reference.images.astype(int)).mean() > 1

    counted_calls(sampler_module, "euler_sample", killed_at=2)
    out = tmp_path / "syn"
    with pytest.raises(KeyboardInterrupt):
        generate(parts, out)
    assert not out.exists() and [p.name for p in (tmp_path / "syn.state").glob("shard_*")] == ["shard_000000.npz"]
    with pytest.raises(StaleStateError, match="other settings"):
        generate(parts, out, cfg_scale=3.0)
    calls = counted_calls(sampler_module, "euler_sample")
    generate(parts, out)
    assert len(calls) == 2  # shards 1 and 2 only
    np.testing.assert_array_equal(open_image_store(out).images, reference.images)
    assert not (tmp_path / "syn.state").exists()


def test_mismatched_tokenizer_is_refused(tmp_path):
    dit, _, stats = tiny_parts()
    with pytest.raises(ValueError, match="do not fit"):
        generate_imagenet_synthetic(dit, VAVAE(**dict(TINY_VAE, resolution=32)), stats, tmp_path / "x", 1, 2,
                                    num_steps=4, timestep_shift=0.3, cfg_scale=2.0, cfg_interval_start=0.125,
                                    cfg_channels=3)


def test_script_generates_from_checkpoints(tmp_path):
    from scripts.generate_imagenet_synthetic import main

    dit, vae, stats = tiny_parts()
    torch.save({"model": dit.state_dict(), "ema": dit.state_dict()}, tmp_path / "dit.pt")
    torch.save({"state_dict": vae.state_dict()}, tmp_path / "vae.pt")
    torch.save({"mean": stats.mean, "std": stats.std}, tmp_path / "stats.pt")
    main(["--dit", str(tmp_path / "dit.pt"), "--vae", str(tmp_path / "vae.pt"), "--latent-stats",
          str(tmp_path / "stats.pt"), "--out", str(tmp_path / "syn"), "--images-per-class", "3", "--num-classes", "2",
          "--num-steps", "4", "--timestep-shift", "0.3", "--cfg-scale", "2.0", "--cfg-interval-start", "0.125",
          "--cfg-channels", "3", "--batch-size", "2", "--seed", "7",
          "--dit-config", json.dumps(TINY_DIT), "--vae-config", json.dumps(TINY_VAE)])
    got = open_image_store(tmp_path / "syn")
    reference = open_image_store(generate((dit, vae, stats), tmp_path / "ref"))
    assert np.abs(got.images.astype(int) - reference.images.astype(int)).max() <= 1
    assert got.meta["diffusion_model"] == str(tmp_path / "dit.pt")


def test_parts_sampled_by_separate_jobs_assemble_into_the_single_run(tmp_path):
    from dra.data.store import PartedRows, assemble_image_store
    from dra.diffusion.lightningdit_sampler import part_rows

    parts = tiny_parts()
    # 7 images in 3 parts: runs of 2, 2 and 3 rows (n k // parts)
    assert [part_rows(7, k, 3) for k in range(3)] == [(0, 2), (2, 4), (4, 7)]
    reference = open_image_store(generate(parts, tmp_path / "whole", n_per_class=4, num_classes=2))
    pieces = [generate(parts, tmp_path / f"part{k}", n_per_class=4, num_classes=2, part=(k, 3)) for k in range(3)]
    assert [len(open_image_store(p)) for p in pieces] == [2, 3, 3]
    assert open_image_store(pieces[1]).meta["rows"] == [2, 5]
    joined = open_image_store(assemble_image_store(pieces, tmp_path / "joined"))
    assert isinstance(joined.images, PartedRows) and len(joined) == 8
    assert joined.labels.tolist() == reference.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_array_equal(joined.images[np.arange(8)], reference.images)
    # every way of indexing reads the same rows as the single store, across part boundaries
    rows = np.array([7, 0, 4, 1, 3, 2])
    np.testing.assert_array_equal(joined.images[rows], reference.images[rows])
    np.testing.assert_array_equal(joined.images[1:6], reference.images[1:6])
    np.testing.assert_array_equal(joined.images[5], reference.images[5])
    np.testing.assert_array_equal(joined.images[-1], reference.images[-1])
    # the joined store links the parts' pixels: removing the parts leaves it readable
    import shutil

    for piece in pieces:
        shutil.rmtree(piece)
    np.testing.assert_array_equal(open_image_store(tmp_path / "joined").images[np.arange(8)], reference.images)
    with pytest.raises(ValueError, match="part 3 of 3 does not exist"):
        generate(parts, tmp_path / "bad", part=(3, 3))


def test_decoding_builds_no_autograd_graph_even_for_trainable_weights():
    # decode_latents runs under no_grad itself: a VA-VAE built without the loader's
    # requires_grad_(False) must not keep the decoder's activations for a backward pass
    from dra.diffusion.lightningdit_sampler import decode_latents

    torch.manual_seed(0)
    vae = VAVAE(**TINY_VAE).eval()
    assert all(p.requires_grad for p in vae.parameters())
    grad_enabled = []
    original = vae.decode
    vae.decode = lambda z: (grad_enabled.append(torch.is_grad_enabled()), original(z))[1]
    stats = LatentStats(torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1))
    images = decode_latents(vae, stats, torch.randn(2, 4, 8, 8))  # 16 px images, one downsampling
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert grad_enabled and not any(grad_enabled)
