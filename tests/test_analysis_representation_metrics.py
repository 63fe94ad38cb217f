"""dra.analysis.representation_metrics against closed-form cases (sources in docs/sources.md)."""

from __future__ import annotations

import math

import pytest
import torch

from dra.analysis.representation_metrics import (
    TopKSAE,
    alignment,
    cknna,
    fourier_magnitude,
    normalized_mse,
    train_topk_sae,
    uniformity,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def circle(n: int, radius: float = 1.0) -> torch.Tensor:
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def test_uniformity_of_four_points_on_a_circle():
    # Square on the unit circle: 4 adjacent pairs at squared distance 2, 2 opposite at 4.
    expected = math.log((4 * math.exp(-2 * 2) + 2 * math.exp(-2 * 4)) / 6)
    assert uniformity(circle(4, radius=3.0)) == pytest.approx(expected, rel=1e-12)  # normalised first
    # Evenly spread points are more uniform (lower) than clustered ones.
    assert uniformity(circle(16)) < uniformity(circle(16) * torch.tensor([1.0, 0.05]) + torch.tensor([1.0, 0.0]))


def test_alignment_of_pairs_at_a_known_angle():
    x = circle(8)
    rotation = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]], dtype=torch.float64)
    # ||x - R x||^2 = 2 - 2 cos(0.3) for unit vectors.
    assert alignment(x, x @ rotation.T) == pytest.approx(2 - 2 * math.cos(0.3), rel=1e-12)
    assert alignment(x, 5 * x) == pytest.approx(0.0, abs=1e-15)
    assert alignment(x, x @ rotation.T, alpha=1) == pytest.approx(math.sqrt(2 - 2 * math.cos(0.3)), rel=1e-12)


def test_cknna_identical_and_rotated_features_is_one():
    features = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    # 1 up to the +1e-6 in the denominator (platonic-rep metrics.py), relative to an HSIC of about 0.02.
    assert cknna(features, features, topk=10) == pytest.approx(1.0, abs=1e-4)
    # Linear kernels do not change under a rotation of the features.
    assert cknna(features, features @ q, topk=10) == pytest.approx(cknna(features, features, topk=10), abs=1e-9)
    unrelated = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    assert cknna(features, unrelated, topk=10) < 0.5
    with pytest.raises(ValueError, match="topk"):
        cknna(features, features, topk=1)


def test_sae_perfect_reconstruction_has_zero_loss_and_mean_has_one():
    x = torch.rand(32, 4) + 0.1  # positive, so ReLU keeps every coordinate
    sae = TopKSAE(4, 4, k=4)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(4))
        sae.encoder.bias.zero_()
        sae.decoder.weight.copy_(torch.eye(4))
    assert normalized_mse(sae(x), x).item() == 0.0
    assert normalized_mse(x.mean(0, keepdim=True).expand_as(x), x).item() == pytest.approx(1.0)
    assert (sae.encode(x) != 0).sum(1).max() <= 4
    sae.k = 2
    assert ((sae.encode(x) != 0).sum(1) <= 2).all()


def test_sae_learns_one_sparse_data():
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(8, 16, generator=generator), dim=1)
    codes = torch.rand(512, 1, generator=generator) + 0.5
    atoms = torch.randint(0, 8, (512,), generator=generator)
    features = codes * dictionary[atoms]
    _, loss = train_topk_sae(features, k=2, latents=32, steps=100, batch_size=128, lr=1e-2, seed=0)
    assert loss < 1e-3  # 1-sparse data in 8 atoms: k=2 with 32 latents reconstructs it (mean predictor: 1)


def test_fourier_spectrum_peaks_at_the_sinusoid_frequency():
    size, frequency = 32, 5
    u = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * frequency * u / size).expand(2, 3, size, size)  # varies along the width
    spectrum = fourier_magnitude(wave)
    peaks = (spectrum > spectrum.max() / 2).nonzero().tolist()
    assert sorted(peaks) == [[size // 2, size // 2 - frequency], [size // 2, size // 2 + frequency]]
    assert spectrum[size // 2, size // 2 + frequency].item() == pytest.approx(size * size / 2)
    constant = fourier_magnitude(torch.ones(1, 1, size, size))
    assert constant.argmax().item() == (size // 2) * size + size // 2  # DC at the centre


pytestmark = pytest.mark.usefixtures("one_torch_thread")
