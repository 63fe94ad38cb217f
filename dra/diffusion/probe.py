"""Validate diffusion features: linear probes over (layer, sigma) and their PGD robustness.

The paper extracts features at a fixed timestep near the one a linear probe finds best (Section 4.2,
following DDAE, FutureXiang/ddae linear.py), and names the block, the U-Net bottleneck before the
upsampling layers, and sigma 0.1 in Appendix D; it shows in Figure 3b that a linear probe
on frozen diffusion features, with the diffusion noise held fixed, is somewhat robust to
small L-inf budgets but breaks at the usual ones. Both measurements are made here for any
EDM checkpoint: a probe grid (CSV + heatmap) and a robust-accuracy curve (CSV + plot).

Probes read the net with the all-zero class vector (its unconditional mode), since a probe
whose input contains the label would measure nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm import tqdm

from dra.attacks import cross_entropy_objective, pgd_linf
from dra.diffusion.edm import EDMPrecond, UNetBlock
from dra.diffusion.features import DiffusionFeatureExtractor, images_to_tensor
from dra.io import atomic_file


class LinearProbe(nn.Module):
    """Standardisation + one linear layer, a torch copy of a fitted scikit-learn probe."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.linear = nn.Linear(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(coef))
            self.linear.bias.copy_(torch.as_tensor(intercept))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.scale)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, seed: int = 0, max_iter: int = 2000) -> LinearProbe:
    """Multinomial logistic regression on standardised frozen features."""
    if not np.isfinite(features).all():
        raise FloatingPointError("diffusion features contain NaN/inf; check the checkpoint and sigma")
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    model = LogisticRegression(max_iter=max_iter, random_state=seed).fit((features - mean) / scale, labels)
    return LinearProbe(mean, scale, model.coef_.astype(np.float32), model.intercept_.astype(np.float32))


def decoder_blocks(net: EDMPrecond) -> list[str]:
    """Names of every decoder UNetBlock, lowest resolution first (the probe's default layers)."""
    return [f"model.dec.{name}" for name, block in net.model.dec.items() if isinstance(block, UNetBlock)]


@torch.no_grad()
def extract_many(net: EDMPrecond, layers: Sequence[str], sigma: float, images01: torch.Tensor, labels: torch.Tensor,
                 offset: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Features of all ``layers`` in one pass per batch; image i is seeded as index offset + i."""
    extractor = DiffusionFeatureExtractor(net, list(layers), sigma, seed=seed, use_labels=False)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for lo in range(0, len(images01), batch_size):
        hi = min(len(images01), lo + batch_size)
        out = extractor(images01[lo:hi], labels[lo:hi], range(offset + lo, offset + hi))
        for name in layers:
            parts[name].append(out[name].numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def probe_grid(net: EDMPrecond, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
               test: tuple[torch.Tensor, torch.Tensor], layers: Sequence[str], sigmas: Sequence[float],
               batch_size: int = 256, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Accuracy of a linear probe per (layer, sigma); the best cell is chosen on ``val``.

    Returns (table with train/val/test accuracy per cell, {(layer, sigma): LinearProbe}).
    Train, val and test images get disjoint noise indices (0.., 10^8.., 2*10^8..).
    """
    rows, probes = [], {}
    for sigma in tqdm(sigmas, desc="probe sigmas", file=sys.stderr):
        feats = [extract_many(net, layers, sigma, images, labels, offset, batch_size, seed)
                 for offset, (images, labels) in zip((0, 10**8, 2 * 10**8), (train, val, test))]
        for layer in layers:
            probe = fit_linear_probe(feats[0][layer], train[1].numpy(), seed)
            accuracy = []
            for split_feats, (_, labels) in zip(feats, (train, val, test)):
                with torch.no_grad():
                    predicted = probe(torch.from_numpy(split_feats[layer])).argmax(1)
                accuracy.append(float((predicted == labels).float().mean()))
            rows.append(dict(layer=layer, sigma=float(sigma), dim=int(feats[0][layer].shape[1]),
                             train_accuracy=accuracy[0], val_accuracy=accuracy[1], test_accuracy=accuracy[2]))
            probes[(layer, float(sigma))] = probe
    return pd.DataFrame(rows), probes


def pgd_from_clean(logits_of, images01: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
                   step_size: float) -> torch.Tensor:
    """Deterministic L-inf PGD on the summed cross-entropy: the training attack
    (dra.attacks.pgd_linf) started at the clean image instead of a random point of the ball,
    so that a curve over eps is a function of the model alone."""
    return pgd_linf(logits_of, images01, cross_entropy_objective(labels), eps, step_size, steps,
                    start_noise=torch.zeros_like(images01))


def probe_robustness(net: EDMPrecond, probe: LinearProbe, layer: str, sigma: float, images01: torch.Tensor,
                     labels: torch.Tensor, index_offset: int, eps_list: Sequence[float], steps: int,
                     step_factor: float, batch_size: int = 128, seed: int = 0) -> pd.DataFrame:
    """Robust accuracy of encoder + probe under PGD-Linf, noise fixed per image (Figure 3b).

    The attack takes ``steps`` sign steps of ``step_factor * eps / steps`` from the clean image.

    The extractor draws the noise from (seed, image index), so every PGD step and the final
    evaluation see the same noise: the attack faces a deterministic function.
    """
    extractor = DiffusionFeatureExtractor(net, layer, sigma, seed=seed, use_labels=False)

    def logits_of(batch_images, batch_indices):
        return probe(extractor(batch_images, None, batch_indices))

    rows = []
    for eps in tqdm(eps_list, desc="probe PGD eps", file=sys.stderr):
        correct = 0
        for lo in range(0, len(images01), batch_size):
            hi = min(len(images01), lo + batch_size)
            indices = range(index_offset + lo, index_offset + hi)
            x, y = images01[lo:hi], labels[lo:hi]
            if eps > 0:
                x = pgd_from_clean(lambda adv, indices=indices: logits_of(adv, indices), x, y, eps, steps,
                                   step_size=step_factor * eps / steps)
            with torch.no_grad():
                correct += int((logits_of(x, indices).argmax(1) == y).sum())
        rows.append(dict(eps=float(eps), eps_255=float(eps) * 255, robust_accuracy=correct / len(images01),
                         n=len(images01), steps=steps if eps > 0 else 0, layer=layer, sigma=float(sigma)))
    return pd.DataFrame(rows)


def _plot_grid(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    grid = table.pivot(index="layer", columns="sigma", values="test_accuracy")
    grid = grid.loc[list(dict.fromkeys(table["layer"]))]
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 3, 0.45 * grid.shape[0] + 1.5))
    sns.heatmap(grid * 100, annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar_kws={"label": "test accuracy (%)"})
    ax.set_xticklabels([f"{s:g}" for s in grid.columns], rotation=0)
    ax.set_xlabel("sigma")
    ax.set_ylabel("")
    ax.set_title("Linear probe on diffusion features")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _plot_robustness(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(table["eps_255"], table["robust_accuracy"] * 100, marker="o", label="DR (linear probe)")
    ax.set_xlabel("eps (x/255)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(f"{table['layer'].iloc[0]}, sigma={table['sigma'].iloc[0]:g}")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def validate_features(weights: str | Path, network: str | Path, train_store: str | Path, test_store: str | Path,
                      out_probe: str | Path, out_probe_png: str | Path, out_robustness: str | Path,
                      out_robustness_png: str | Path, sigmas: Sequence[float], layers: Sequence[str] | None,
                      eps_list: Sequence[float], pgd_steps: int, pgd_step_factor: float, n_attack: int,
                      n_train: int | None = None, n_test: int | None = None, val_fraction: float = 0.2,
                      batch_size: int = 256, seed: int = 0) -> dict:
    """Probe grid (CSV + heatmap) and PGD robustness of the cell best on validation (CSV + plot).

    Returns a summary: the best cell, its accuracies and the robust accuracy per eps.
    """
    from dra.data.store import open_image_store
    from dra.diffusion.checkpoint import load_edm

    net = load_edm(weights, network)
    layers = list(layers) if layers else decoder_blocks(net)
    train_store_, test_store_ = open_image_store(train_store), open_image_store(test_store)
    n_train = min(n_train or len(train_store_), len(train_store_))
    n_test = min(n_test or len(test_store_), len(test_store_))
    order = np.random.default_rng(seed).permutation(len(train_store_))[:n_train]
    order.sort()  # memmap reads in file order
    images = images_to_tensor(train_store_.images[order])
    labels = torch.from_numpy(np.array(train_store_.labels[order], dtype=np.int64))
    n_val = int(round(n_train * val_fraction))
    if n_val < 1 or n_train - n_val < 2:
        raise ValueError(f"need at least 2 training and 1 validation image for the probe, got n_train={n_train}")
    train = (images[n_val:], labels[n_val:])
    val = (images[:n_val], labels[:n_val])
    test = (images_to_tensor(test_store_.images[:n_test]),
            torch.from_numpy(np.array(test_store_.labels[:n_test], dtype=np.int64)))

    table, probes = probe_grid(net, train, val, test, layers, sigmas, batch_size, seed)
    with atomic_file(out_probe) as tmp:
        table.to_csv(tmp, index=False)
    _plot_grid(table, Path(out_probe_png))

    best = table.loc[table["val_accuracy"].idxmax()]
    layer, sigma = best["layer"], float(best["sigma"])
    n_attack = min(n_attack, n_test)
    robust = probe_robustness(net, probes[(layer, sigma)], layer, sigma, test[0][:n_attack], test[1][:n_attack],
                              2 * 10**8, eps_list, pgd_steps, pgd_step_factor,
                              batch_size=min(batch_size, 128), seed=seed)
    with atomic_file(out_robustness) as tmp:
        robust.to_csv(tmp, index=False)
    _plot_robustness(robust, Path(out_robustness_png))
    return dict(best_layer=layer, best_sigma=sigma, best_val_accuracy=float(best["val_accuracy"]),
                best_test_accuracy=float(best["test_accuracy"]), n_train=len(train[0]), n_val=n_val, n_test=n_test,
                robust_accuracy={f"{r.eps_255:g}/255": r.robust_accuracy for r in robust.itertuples()})
