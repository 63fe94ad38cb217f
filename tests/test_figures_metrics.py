"""dra.analysis.figures: the measurements behind the figures, against closed forms."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dra.analysis.figures import (
    FigureInputError,
    alignment_uniformity,
    fold_spectrum,
    held_out_sae_loss,
    measure_representation,
    short_labels,
    unit_gradient_spectrum,
)
from dra.analysis.representation_metrics import fourier_magnitude

torch.set_num_threads(1)


def test_fold_puts_a_cosine_at_its_absolute_frequency():
    # cos(2 pi 3 x / 8) has |FFT| = H W / 2 at horizontal frequencies +-3, zero elsewhere
    height, width = 6, 8
    x = torch.arange(width, dtype=torch.float64)
    image = torch.cos(2 * math.pi * 3 * x / width).expand(height, width)
    folded = fold_spectrum(fourier_magnitude(image[None, None]))
    assert folded.shape == (height // 2 + 1, width // 2 + 1)
    expected = np.zeros_like(folded)
    expected[0, 3] = height * width / 2
    np.testing.assert_allclose(folded, expected, atol=1e-9)


def test_fold_of_a_constant_is_the_zero_frequency_in_the_upper_left():
    folded = fold_spectrum(fourier_magnitude(torch.full((1, 3, 4, 4), 0.5)))
    expected = np.zeros((3, 3))
    expected[0, 0] = 0.5 * 16  # the DC term is the sum of the pixels
    np.testing.assert_allclose(folded, expected, atol=1e-9)
    with pytest.raises(FigureInputError, match="spectrum is"):
        fold_spectrum(np.zeros((2, 3, 4)))


def linear_two_class(n=40, seed=0):
    """logits = (w . x, 0) with x around 0.5: PGD's worst case is x - eps sign(w) y-signed."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    images = 0.5 + 0.05 * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    scores = (images * w).sum((1, 2, 3))
    labels = (scores > 0).long()  # every clean point is correct

    def forward(x, _first):
        score = (x * w).sum((1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], 1), torch.stack([score, x.flatten(1).sum(1)], 1)

    return forward, images, labels, w, scores


def test_measure_representation_matches_the_linear_closed_form():
    forward, images, labels, w, scores = linear_two_class()
    eps = 0.02
    record = measure_representation(forward, images, labels, [0.0, eps, 0.1], eps, steps=10, step_factor=2.5,
                                    batch_size=16)
    # the sign of the loss gradient never changes for a linear 2-class model, so 10 steps of
    # 2.5 eps / 10 reach the corner delta = eps * sign(w) * (1 - 2 y) of the ball
    margin = scores.abs()
    robust = {e: 100.0 * (margin > e * w.abs().sum()).double().mean().item() for e in (0.0, eps, 0.1)}
    np.testing.assert_allclose(record["robust_accuracy"], [robust[0.0], robust[eps], robust[0.1]])
    assert record["clean_accuracy"] == 100.0 and list(record["eps"]) == [0.0, eps, 0.1]
    delta = eps * torch.sign(w) * (1 - 2 * labels.double())[:, None, None, None]
    np.testing.assert_allclose(record["perturbation_spectrum"], fourier_magnitude(delta).numpy(), rtol=1e-9)
    adversarial_score = ((images + delta) * w).sum((1, 2, 3))
    np.testing.assert_allclose(record["adversarial_features"][:, 0], adversarial_score.float().numpy(), rtol=1e-5)
    # d CE / dx = (softmax_1 - y) w for logits (0, s)
    gradient = (torch.sigmoid(scores) - labels.double())[:, None, None, None] * w
    np.testing.assert_allclose(record["gradient_spectrum"], unit_gradient_spectrum(gradient).numpy(), rtol=1e-6)


def test_unit_gradient_spectrum_ignores_the_gradient_scale():
    g = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scaled = g * torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0], dtype=torch.float64)[:, None, None, None]
    torch.testing.assert_close(unit_gradient_spectrum(g), unit_gradient_spectrum(scaled))
    # Parseval: with one channel, a unit-norm image's squared spectrum sums to H * W
    single = g[:1, :1] / g[:1, :1].norm()
    assert (unit_gradient_spectrum(g[:1, :1]) ** 2).sum().item() == pytest.approx(64.0, rel=1e-9)
    torch.testing.assert_close(unit_gradient_spectrum(g[:1, :1]), fourier_magnitude(single))


def test_alignment_and_uniformity_of_known_points():
    # two orthogonal unit vectors: squared distance 2, uniformity log exp(-2 * 2) = -4
    clean = np.array([[3.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    same = alignment_uniformity({"clean_features": clean, "adversarial_features": 2 * clean})
    assert same["alignment"] == pytest.approx(0.0) and same["uniformity"] == pytest.approx(-4.0)
    flipped = alignment_uniformity({"clean_features": clean, "adversarial_features": -clean})
    assert flipped["alignment"] == pytest.approx(4.0)  # |x - (-x)|^2 = 4 on the sphere
    assert flipped["uniformity"] == pytest.approx(-4.0)


def test_sae_loss_falls_with_k_and_is_small_for_sparse_data():
    g = torch.Generator().manual_seed(0)
    dim, n = 16, 400
    dense = torch.randn(n, dim, generator=g).numpy()
    settings = dict(latents=4 * dim, steps=300, batch_size=64, lr=1e-2, seed=0)
    one, eight = held_out_sae_loss(dense, 1, **settings), held_out_sae_loss(dense, 8, **settings)
    assert 0 < eight < one < 1.2
    # rows made of at most 2 of 8 fixed directions: a K = 4 SAE with 64 latents can represent them
    dictionary = F.normalize(torch.randn(8, dim, generator=g), dim=1)
    codes = torch.zeros(n, 8)
    picks = torch.randint(0, 8, (n, 2), generator=g)
    codes.scatter_(1, picks, torch.rand(n, 2, generator=g) + 0.5)
    sparse = (codes @ dictionary).numpy()
    assert held_out_sae_loss(sparse, 4, **settings) < eight
    with pytest.raises(FigureInputError, match="at least 4"):
        held_out_sae_loss(dense[:3], 1, **settings)


def test_short_labels_keep_what_differs():
    models = ["digits/wrn-10-1/at/nosyn-bs128-ep30", "digits/wrn-10-1/dm-at/syn2k-bs128-ep30"]
    assert short_labels(models) == {models[0]: "at nosyn-bs128-ep30", models[1]: "dm-at syn2k-bs128-ep30"}
    assert short_labels(["reference/x", models[0]]) == {"reference/x": "reference/x", models[0]: models[0]}
