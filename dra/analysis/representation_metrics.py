"""Representation metrics of Figures 5, 6 and Appendix E (sources: docs/sources.md).

- alignment / uniformity (Wang & Isola 2020) of L2-normalised features (Figure 5);
- CKNNA, CKA restricted to mutual nearest neighbours (Huh et al. 2024);
- a TopK sparse autoencoder and its normalized reconstruction loss (Gao et al. 2025; Figure 6);
- the centred Fourier magnitude spectrum of perturbations or input gradients (Appendix E).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Mean ||x_i - y_i||^alpha over positive pairs, on L2-normalised rows (lower is better)."""
    x, y = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    return (x - y).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """log of the mean over pairs i < j of exp(-t ||x_i - x_j||^2), on L2-normalised rows."""
    x = F.normalize(x.double(), dim=1)
    return torch.pdist(x).pow(2).mul(-t).exp().mean().log().item()


def _hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Song et al. 2012, Eq. 5, with the diagonals zeroed (platonic-rep metrics.py)."""
    m = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    l_ = l_ - torch.diag(torch.diag(l_))
    trace = (k * l_).sum()  # tr(K L^T)
    middle = k.sum() * l_.sum() / ((m - 1) * (m - 2))
    last = 2.0 * (k @ l_).sum() / (m - 2)
    return (trace + middle - last) / (m * (m - 3))


def _knn_mask(kernel: torch.Tensor, topk: int) -> torch.Tensor:
    """1 where j is among the topk most similar rows to i (self excluded)."""
    scores = kernel.clone()
    scores.fill_diagonal_(float("-inf"))
    neighbours = scores.topk(topk, dim=1).indices
    return torch.zeros_like(kernel).scatter_(1, neighbours, 1.0)


def cknna(a: torch.Tensor, b: torch.Tensor, topk: int = 10, normalize: bool = True) -> float:
    """CKNNA between two representations of the same n inputs: linear kernels K = A A^T and
    L = B B^T, restricted to the pairs that are mutual k-nearest neighbours in both."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"cknna needs the same inputs in both: {a.shape[0]} vs {b.shape[0]} rows")
    if not 2 <= topk < a.shape[0] - 1:
        raise ValueError(f"cknna topk must lie in [2, n - 2]; got {topk} for n = {a.shape[0]}")
    a, b = a.double(), b.double()
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    k, l_ = a @ a.T, b @ b.T
    mask_k, mask_l = _knn_mask(k, topk), _knn_mask(l_, topk)

    def similarity(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _hsic_unbiased(mask * x, mask * y)

    kl = similarity(k, l_, mask_k * mask_l)
    kk = similarity(k, k, mask_k)
    ll = similarity(l_, l_, mask_l)
    return (kl / (torch.sqrt(kk * ll) + 1e-6)).item()


class TopKSAE(nn.Module):
    """latents = ReLU(TopK(W_enc (x - b_pre) + b_lat)); recon = W_dec latents + b_pre,
    decoder columns kept at unit norm (openai/sparse_autoencoder model.py; the unit norm: train.py
    unit_norm_decoder_)."""

    def __init__(self, dim: int, latents: int, k: int):
        super().__init__()
        if not 0 < k <= latents:
            raise ValueError(f"TopK SAE needs 0 < k <= latents; got k={k}, latents={latents}")
        self.k = k
        self.pre_bias = nn.Parameter(torch.zeros(dim))
        self.encoder = nn.Linear(dim, latents)
        self.decoder = nn.Linear(latents, dim, bias=False)
        with torch.no_grad():
            self.decoder.weight.copy_(F.normalize(torch.randn(dim, latents), dim=0))
            self.encoder.weight.copy_(self.decoder.weight.T)  # encoder starts as the decoder's transpose
            self.encoder.bias.zero_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(x - self.pre_bias)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, F.relu(top.values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x)) + self.pre_bias


def normalized_mse(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE(recon, x) / MSE(mean of x, x): 0 for perfect reconstruction, 1 for always predicting
    the mean activation (openai/sparse_autoencoder kernels.py)."""
    return F.mse_loss(reconstruction, x) / F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x)


def train_topk_sae(features: torch.Tensor, k: int, latents: int, steps: int, batch_size: int, lr: float,
                   seed: int) -> tuple[TopKSAE, float]:
    """Fit a TopK SAE with Adam on the normalized MSE; returns it and its normalized loss on all
    of ``features``. Features are layer-normalised first, as for the TopK checkpoints."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = F.layer_norm(features.float(), features.shape[1:])
    sae = TopKSAE(x.shape[1], latents, k)
    with torch.no_grad():
        sae.pre_bias.copy_(x.median(0).values)  # coordinate-wise; the reference uses the geometric median
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        batch = x[torch.randint(0, x.shape[0], (batch_size,), generator=generator)]
        loss = normalized_mse(sae(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.decoder.weight.copy_(F.normalize(sae.decoder.weight, dim=0))
    with torch.no_grad():
        return sae, normalized_mse(sae(x), x).item()


def fourier_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Mean over images and channels of |FFT2|, shifted so the zero frequency sits at
    (H // 2, W // 2) (torch.fft.fftshift). images: (N, C, H, W) perturbations or gradients."""
    if images.ndim != 4:
        raise ValueError(f"fourier_magnitude expects (N, C, H, W); got shape {tuple(images.shape)}")
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.double()), dim=(-2, -1)).abs()
    return spectrum.mean(dim=(0, 1))
