"""dra.analysis.classification_dimension (paper Section 5.5, Table 3; Feng et al. 2022, run_cls_dim.py)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dra.analysis.classification_dimension import (
    ClassificationDimensionError,
    classification_dimension,
    find_linear_head,
    pca_directions,
    pgd_adversarial_images,
    projected_accuracy,
)

RANK = 3
DIM = 6


def known_rank_problem():
    """8 classes = the 8 sign patterns p in {-1, 1}^3, feature x = p * (3, 2, 1) in the first 3
    of 6 coordinates (variances 9, 4, 1; the other 3 are zero), rotated by a random orthogonal Q.

    The head scores class c by p_c . (x / scale) + 0.1 * (number of +1 in p_c). Keeping only the
    top k < 3 components zeroes the last 3 - k coordinates; among the 2^(3-k) classes that agree
    with the true one on the first k, the bias picks the one with +1 on the rest, so exactly one
    class in each group stays correct: acc(k) = 2^k / 8 = 25, 50, 100 % for k = 1, 2, 3.
    """
    patterns = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=RANK)), dtype=torch.float64)
    scale = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    features = torch.zeros(8, DIM, dtype=torch.float64)
    features[:, :RANK] = patterns * scale
    weight = torch.zeros(8, DIM, dtype=torch.float64)
    weight[:, :RANK] = patterns / scale
    bias = 0.1 * (patterns > 0).sum(1).double()
    # Class 0 also reads the 4th (zero-variance) coordinate: pushing it makes class 0 win.
    weight[0, RANK] = 1.0
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    head = nn.Linear(DIM, 8).double()
    with torch.no_grad():
        head.weight.copy_(weight @ q.T)
        head.bias.copy_(bias)
    perturbation = torch.zeros(DIM, dtype=torch.float64)
    perturbation[RANK] = 100.0
    return features @ q.T, (features + perturbation) @ q.T, torch.arange(8), head


def test_known_rank_gives_dimension_three_by_hand():
    clean, adversarial, labels, head = known_rank_problem()
    result = classification_dimension(clean, adversarial, labels, head)
    np.testing.assert_allclose(result.curve["clean_acc"].to_numpy(), [25, 50, 100, 100, 100, 100])
    # The perturbation lives in a zero-variance direction: the top 3 components remove it.
    np.testing.assert_allclose(result.curve["robust_acc"].to_numpy()[:3], [25, 50, 100])
    assert result.curve["robust_acc"].iloc[-1] == 12.5  # full model: everything becomes class 0
    assert result.summary["cls95"] == RANK and result.summary["cls99"] == RANK
    assert result.summary["robust_dim"] == RANK
    assert result.summary["clean_accuracy"] == 100.0 and result.summary["robust_accuracy"] == 12.5
    assert list(result.curve["k"]) == [1, 2, 3, 4, 5, 6]


def test_pca_is_centred_covariance_in_descending_order():
    clean, _, _, _ = known_rank_problem()
    eigenvalues, eigenvectors = pca_directions(clean + 5.0)  # a mean offset does not change PCA
    np.testing.assert_allclose(eigenvalues.numpy(), [9, 4, 1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose((eigenvectors.T @ eigenvectors).numpy(), np.eye(DIM), atol=1e-12)


def test_running_sum_equals_float64_projection_of_uncentered_features():
    generator = torch.Generator().manual_seed(1)
    n, dim, classes = 300, 12, 5
    # Offset mean: the projection is of the uncentered X (Rank-Diminishing core/pca.py), so it matters here.
    features = torch.randn(n, dim, generator=generator) * torch.linspace(3, 0.2, dim) + 1.5
    head = nn.Linear(dim, classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes, dim, generator=generator))
        head.bias.copy_(torch.randn(classes, generator=generator))
        labels = head(features + 0.5 * torch.randn(n, dim, generator=generator)).argmax(1)
    _, eigenvectors = pca_directions(features)
    curve = projected_accuracy(features, labels, eigenvectors, head)

    x = features.double()
    reference = []
    for k in range(1, dim + 1):
        v = eigenvectors[:, :k]
        logits = (x @ v @ v.T) @ head.weight.double().T + head.bias.double()
        reference.append(100.0 * (logits.argmax(1) == labels).double().mean().item())
    np.testing.assert_array_equal(curve, reference)
    with torch.no_grad():
        assert curve[-1] == 100.0 * (head(features).argmax(1) == labels).double().mean().item()


def test_mismatched_inputs_are_refused():
    clean, adversarial, labels, head = known_rank_problem()
    with pytest.raises(ClassificationDimensionError, match="must be"):
        classification_dimension(clean, adversarial[:4], labels, head)
    with pytest.raises(ClassificationDimensionError, match="NaN"):
        classification_dimension(clean, adversarial * float("nan"), labels, head)
    with pytest.raises(ClassificationDimensionError, match="reads 5 features"):
        classification_dimension(clean, adversarial, labels, nn.Linear(5, 8).double())


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward_features(self, x):
        features = self.body(x)
        return self.fc(features), features

    def forward(self, x):
        return self.forward_features(x)[0]


def test_head_is_found_and_checked():
    torch.manual_seed(0)
    model = TwoLayer().eval()
    x = torch.rand(5, 3, 2, 2)
    logits, features = model.forward_features(x)
    assert find_linear_head(model, features.detach(), logits.detach()) is model.fc
    with pytest.raises(ClassificationDimensionError, match="does not turn"):
        find_linear_head(model, features.detach(), logits.detach() + 1.0)


def test_pgd_stays_in_the_ball_and_lowers_accuracy():
    torch.manual_seed(0)
    model = TwoLayer().eval()
    x = torch.rand(32, 3, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    x_adv = pgd_adversarial_images(model, x, y, eps=0.3, step=0.05, steps=20, seed=0, batch_size=16, device="cpu")
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y).float().mean() < 1.0
    again = pgd_adversarial_images(model, x, y, eps=0.3, step=0.05, steps=20, seed=0, batch_size=16, device="cpu")
    assert torch.equal(x_adv, again)  # seeded random start


@pytest.mark.slow
def test_script_writes_json_curve_and_png(tmp_path):
    from model_fixtures import tiny_wrn_with_test_store

    model = tiny_wrn_with_test_store(tmp_path, 40)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "scripts/classification_dimension.py", "--model", str(tmp_path / "model.pt"),
         "--recipe", str(tmp_path / "recipe.yaml"), "--test-store", str(tmp_path / "test"), "--n", "40",
         "--eps", "2/255", "--steps", "3", "--step-fraction", "0.25", "--batch-size", "20", "--threads", "1",
         "--device", "cpu",
         "--out-json", str(out / "cd.json"), "--out-csv", str(out / "cd.csv"), "--out-png", str(out / "cd.png")],
        capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "cd.json").read_text())
    curve = pd.read_csv(out / "cd.csv")
    dim = model.feature_dim
    assert list(curve["k"]) == list(range(1, dim + 1))
    assert summary["clean_accuracy"] == 100.0 == curve["clean_acc"].iloc[-1]  # labels = predictions
    assert summary["robust_accuracy"] == curve["robust_acc"].iloc[-1]
    cls95 = summary["cls95"]
    assert curve["clean_acc"].iloc[cls95 - 1] >= 95.0 > curve["clean_acc"].to_numpy()[: cls95 - 1].max(initial=0)
    assert summary["robust_dim"] == int(curve["robust_acc"].to_numpy().argmax()) + 1
    assert (out / "cd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
