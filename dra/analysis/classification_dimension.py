"""Classification dimension (paper Section 5.5, Table 3, Figure 7; Feng et al. 2022).

PCA of the clean penultimate features (centred by their mean, covariance X^T X / n, eigenvectors
by descending eigenvalue). For k = 1..D the UNCENTERED features are projected onto the top-k
eigenvectors, X V_k V_k^T, and passed through the model's own final linear layer; acc(k) is the
resulting accuracy (Feng et al. 2022, run_cls_dim.py; docs/sources.md). CLS-95 / CLS-99 is the smallest k with
acc(k) >= 0.95 / 0.99 * acc(full). The robust-aware variant projects the features of PGD
adversarial examples (made against the full model) onto the same clean eigenvectors; the robust
dimension is the k where that robust accuracy peaks (the smallest such k).

All k are evaluated in one pass: with Z = X V and U = V^T W^T, the logits at k are
b + sum_{i<=k} Z[:, i] U[i, :], a running sum (O(n D C) instead of O(n D^2) per k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from dra.io import atomic_file, package_versions, write_json

RATIOS = {"cls95": 0.95, "cls99": 0.99}


class ClassificationDimensionError(ValueError):
    """Features, labels or the classification head do not fit together."""


@dataclass
class ClassificationDimension:
    curve: pd.DataFrame  # k, clean_acc, robust_acc (percent), k = 1..D
    summary: dict  # cls95, cls99, robust_dim, clean/robust accuracy of the full model, n, dim


def pca_directions(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns, same order) of the feature covariance,
    in float64."""
    x = features.double()
    centred = x - x.mean(0, keepdim=True)
    covariance = centred.T @ centred / x.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return eigenvalues.flip(0), eigenvectors.flip(1)


def _head_parameters(head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the head as float64 CPU copies (the model itself is left untouched)."""
    weight = head.weight.detach().cpu().double()
    if head.bias is None:
        return weight, torch.zeros(weight.shape[0], dtype=torch.float64)
    return weight, head.bias.detach().cpu().double()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels.cpu()).double().mean().item()


def projected_accuracy(features: torch.Tensor, labels: torch.Tensor, eigenvectors: torch.Tensor,
                       head: nn.Linear) -> np.ndarray:
    """Accuracy (percent) of head(X V_k V_k^T) for k = 1..D, in float64."""
    weight, bias = _head_parameters(head)
    coordinates = features.double().cpu() @ eigenvectors  # Z = X V, (n, D)
    readout = eigenvectors.T @ weight.T  # U = V^T W^T, (D, C)
    logits = bias.expand(features.shape[0], -1).clone()
    labels = labels.cpu()
    accuracy = np.empty(eigenvectors.shape[1])
    for k in range(eigenvectors.shape[1]):
        logits += coordinates[:, k:k + 1] * readout[k]
        accuracy[k] = _accuracy(logits, labels)
    return accuracy


def smallest_k_reaching(accuracy: np.ndarray, target: float) -> int:
    """The smallest k (1-based) with accuracy[k - 1] >= target."""
    reached = np.flatnonzero(accuracy >= target)
    if reached.size == 0:
        raise ClassificationDimensionError(
            f"no k reaches accuracy {target:.4f}%; the curve peaks at {accuracy.max():.4f}%")
    return int(reached[0]) + 1


def classification_dimension(clean_features: torch.Tensor, adversarial_features: torch.Tensor,
                             labels: torch.Tensor, head: nn.Linear) -> ClassificationDimension:
    """Clean and robust accuracy curves over k and the dimensions of Table 3."""
    n, dim = clean_features.shape
    if adversarial_features.shape != (n, dim) or labels.shape != (n,):
        raise ClassificationDimensionError(
            f"clean features {tuple(clean_features.shape)}, adversarial features "
            f"{tuple(adversarial_features.shape)} and labels {tuple(labels.shape)} must be (n, D), (n, D), (n,)")
    if head.in_features != dim:
        raise ClassificationDimensionError(f"the head reads {head.in_features} features, the features have {dim}")
    if not (torch.isfinite(clean_features).all() and torch.isfinite(adversarial_features).all()):
        raise ClassificationDimensionError("features contain NaN or inf")
    _, eigenvectors = pca_directions(clean_features)
    clean_curve = projected_accuracy(clean_features, labels, eigenvectors, head)
    robust_curve = projected_accuracy(adversarial_features, labels, eigenvectors, head)
    weight, bias = _head_parameters(head)
    full_clean = _accuracy(torch.nn.functional.linear(clean_features.double().cpu(), weight, bias), labels)
    full_robust = _accuracy(torch.nn.functional.linear(adversarial_features.double().cpu(), weight, bias), labels)
    summary = {name: smallest_k_reaching(clean_curve, ratio * full_clean) for name, ratio in RATIOS.items()}
    summary.update(robust_dim=int(np.argmax(robust_curve)) + 1, robust_dim_accuracy=float(robust_curve.max()),
                   clean_accuracy=full_clean, robust_accuracy=full_robust, n=int(n), feature_dim=int(dim))
    curve = pd.DataFrame({"k": np.arange(1, dim + 1), "clean_acc": clean_curve, "robust_acc": robust_curve})
    return ClassificationDimension(curve=curve, summary=summary)


def extract_features(model: nn.Module, images01: torch.Tensor, batch_size: int,
                     device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled penultimate features) of model.forward_features, in eval mode, on CPU."""
    model.eval()
    logits, features = [], []
    with torch.no_grad():
        for start in range(0, images01.shape[0], batch_size):
            batch_logits, batch_features = model.forward_features(images01[start:start + batch_size].to(device))
            logits.append(batch_logits.float().cpu())
            features.append(batch_features.float().cpu())
    return torch.cat(logits), torch.cat(features)


def find_linear_head(model: nn.Module, features: torch.Tensor, logits: torch.Tensor) -> nn.Linear:
    """The model's final linear layer: the last nn.Linear mapping D features to C logits, checked
    to reproduce the model's logits from its features (so logits = head(features) holds)."""
    candidates = [m for m in model.modules() if isinstance(m, nn.Linear)
                  and m.in_features == features.shape[1] and m.out_features == logits.shape[1]]
    if not candidates:
        raise ClassificationDimensionError(
            f"the model has no nn.Linear from {features.shape[1]} features to {logits.shape[1]} classes")
    head = candidates[-1]
    with torch.no_grad():
        recomputed = head(features.to(head.weight.device)).cpu()
    tolerance = 1e-4 * max(1.0, logits.abs().max().item())
    if not torch.allclose(recomputed, logits, atol=tolerance, rtol=0):
        raise ClassificationDimensionError(
            "the last nn.Linear does not turn forward_features' features into its logits "
            f"(max difference {(recomputed - logits).abs().max().item():.3g}); the head is not a plain linear layer")
    return head


def pgd_adversarial_images(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, eps: float,
                           step: float, steps: int, seed: int, batch_size: int,
                           device: torch.device | str) -> torch.Tensor:
    """Linf PGD on cross-entropy against the full model in eval mode, uniform random start
    (the training code's attack, dra.attacks)."""
    from dra.attacks import cross_entropy_objective, pgd_linf, uniform_ball_noise

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    adversarial = []
    for start in range(0, images01.shape[0], batch_size):
        x = images01[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        noise = uniform_ball_noise(x.shape, eps, generator, device=device)
        adversarial.append(pgd_linf(model, x, cross_entropy_objective(y), eps, step, steps, noise).cpu())
    return torch.cat(adversarial)


def plot_curve(curve: pd.DataFrame, summary: dict, out_png: str | Path) -> None:
    """Figure 7: clean and robust accuracy against the number of principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(curve["k"], curve["clean_acc"], label="natural")
    axis.plot(curve["k"], curve["robust_acc"], label="adversarial (PGD)")
    axis.axvline(summary["cls95"], color="grey", linestyle=":", label=f"CLS-95 = {summary['cls95']}")
    axis.axvline(summary["robust_dim"], color="black", linestyle="--", label=f"robust dim = {summary['robust_dim']}")
    axis.set_xscale("log")
    axis.set_xlabel("principal components K")
    axis.set_ylabel("accuracy (%)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_file(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    plt.close(figure)


def run_classification_dimension(model_path: str | Path, recipe_path: str | Path, test_store: str | Path,
                                 n: int | None, eps: float, step: float, steps: int, seed: int, batch_size: int,
                                 device: str | torch.device, out_json: str | Path, out_csv: str | Path,
                                 out_png: str | Path) -> dict:
    """Table 3 / Figure 7 for one cell: features of the first n test points and of their PGD
    adversarial examples -> curve CSV, PNG and the JSON the table reads."""
    from dra.evaluation.autoattack import eps_as_255, load_classifier, load_test_images

    model = load_classifier(model_path, recipe_path, device)
    images01, labels = load_test_images(test_store, n)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adversarial = pgd_adversarial_images(model, images01, labels, eps, step, steps, seed, batch_size, device)
    logits, clean_features = extract_features(model, images01, batch_size, device)
    _, adversarial_features = extract_features(model, adversarial, batch_size, device)
    head = find_linear_head(model, clean_features, logits)
    result = classification_dimension(clean_features, adversarial_features, labels, head)
    summary = dict(result.summary, eps=float(eps), eps_255=eps_as_255(eps), pgd_step=float(step), pgd_steps=int(steps),
                   seed=int(seed), model=str(model_path), package_versions=package_versions())
    with atomic_file(out_csv) as tmp:
        result.curve.to_csv(tmp, index=False)
    plot_curve(result.curve, summary, out_png)
    write_json(out_json, summary)
    return summary
