"""EDM Heun sampler (NVlabs/edm generate.py) and resumable synthetic-data generation."""

import math

import numpy as np
import pytest
import torch

import dra.diffusion.sampler as sampler_module
from dra.data.store import open_image_store
from dra.diffusion.edm import EDMPrecond, one_hot_labels
from dra.diffusion.sampler import (edm_heun_sample, edm_sigma_steps, generate_synthetic, generation_plan,
                                   seeded_latents, to_uint8_hwc)
from dra.diffusion.shards import StaleStateError

torch.set_num_threads(1)


def tiny_net(label_dim=2):
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=label_dim, model_channels=16, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[4], dropout=0.0)
    with torch.no_grad():  # leave the near-zero init so outputs depend on every block
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_18_step_sigma_grid_matches_recipe():
    # NVlabs/edm generate.py edm_sampler: values computed from its step formula (rounded to 3-4 digits).
    listed = [80, 57.59, 40.79, 28.37, 19.35, 12.91, 8.40, 5.32, 3.26, 1.92, 1.09, 0.585, 0.296, 0.140, 0.0599,
              0.0229, 0.0075, 0.002, 0]
    grid = edm_sigma_steps(18)
    assert grid.dtype == torch.float64 and len(grid) == 19
    np.testing.assert_allclose(grid.numpy()[:-1], listed[:-1], rtol=6e-3)
    assert grid[0] == 80 and grid[-2] == pytest.approx(0.002) and grid[-1] == 0


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of data ~ N(0, s^2): D(x; sigma) = s^2 / (s^2 + sigma^2) x; counts calls."""

    label_dim, sigma_min, sigma_max = 0, 0, float("inf")

    def __init__(self, s):
        super().__init__()
        self.s, self.calls = s, 0

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        return (self.s ** 2 / (self.s ** 2 + sigma ** 2) * x).float()


def test_heun_solves_the_probability_flow_ode_of_a_gaussian():
    # For N(0, s^2) data the ODE dx/dsigma = (x - D)/sigma has x(sigma) = x_T sqrt(s^2+sigma^2)/sqrt(s^2+T^2).
    s = 0.5
    latents = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = latents.double() * 80 * s / math.sqrt(s ** 2 + 80 ** 2)
    errors = {}
    for steps in (18, 50, 200):
        net = GaussianDenoiser(s)
        out = edm_heun_sample(net, latents, num_steps=steps)
        assert net.calls == 2 * steps - 1  # Euler + Heun on all but the last step: NFE 35 at 18 (EDM README.md)
        errors[steps] = ((out - exact).abs() / exact.abs()).max().item()
    assert errors[200] < 1e-3
    assert 10 < errors[50] / errors[200] < 20  # second order: 4x the steps, ~16x less error


def test_samples_do_not_depend_on_batch_composition():
    net = tiny_net()
    seeds, labels = [5, 6, 7, 8], torch.tensor([0, 1, 1, 0])
    together = edm_heun_sample(net, seeded_latents(seeds, (3, 8, 8)), one_hot_labels(labels, 2), num_steps=4)
    alone = torch.cat([edm_heun_sample(net, seeded_latents([s], (3, 8, 8)), one_hot_labels(labels[i:i + 1], 2),
                                       num_steps=4) for i, s in enumerate(seeds)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(seeded_latents([6], (3, 8, 8))[0], seeded_latents([5, 6], (3, 8, 8))[1])
    other_label = edm_heun_sample(net, seeded_latents(seeds[:1], (3, 8, 8)), one_hot_labels(torch.tensor([1]), 2), 4)
    assert not torch.allclose(other_label, together[:1], atol=1e-3)  # the class label conditions the sample


def test_uint8_conversion_truncates_like_dmat():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 3.0]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    pixels = to_uint8_hwc(x)
    # clip(x * 127.5 + 128, 0, 255) truncated (DM-AT edm/generate.py): -0.999 -> 0.6275 -> 0; 0.5 -> 191.75 -> 191.
    assert pixels.shape == (1, 1, 7, 3) and pixels.dtype == np.uint8
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255, 255]


def test_generation_plan_reuses_seeds_per_class():
    labels, seeds = generation_plan(3, 2, seed=10)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and seeds.tolist() == [10, 11, 12, 10, 11, 12]


def test_generate_synthetic_resumes_after_a_kill(tmp_path, counted_calls):
    net = tiny_net()
    reference = generate_synthetic(net, tmp_path / "ref", n_per_class=3, num_classes=2, num_steps=3, batch_size=2,
                                   seed=1, shard_size=2)

    counted_calls(sampler_module, "edm_heun_sample", killed_at=2)
    out = tmp_path / "syn"
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(net, out, 3, 2, num_steps=3, batch_size=2, seed=1, shard_size=2)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "syn.state").glob("shard_*")) == ["shard_000000.npz"]
    with pytest.raises(StaleStateError, match="other settings"):
        generate_synthetic(net, out, 3, 2, num_steps=4, batch_size=2, seed=1, shard_size=2)

    calls = counted_calls(sampler_module, "edm_heun_sample")
    generate_synthetic(net, out, 3, 2, num_steps=3, batch_size=2, seed=1, shard_size=2)
    assert len(calls) == 2  # shards 1 and 2 only; shard 0 came from the state folder
    assert not (tmp_path / "syn.state").exists()
    got, want = open_image_store(out), open_image_store(reference)
    assert got.images.shape == (6, 8, 8, 3) and got.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 1
    assert got.meta["num_steps"] == 3 and got.meta["num_classes"] == 2


def test_wrong_class_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label_dim 2"):
        generate_synthetic(tiny_net(), tmp_path / "x", n_per_class=1, num_classes=10, num_steps=2)
