"""Diffusion Representation Alignment: projection head, loss, and where targets come from.

Paper eq. 3-4: L = L_AT + lambda * L_DRA, L_DRA = -sim(g_proj(h_CLS(x_adv)), h_DR(x)), with
sim = cosine similarity, lambda = 1.2, g_proj a 3-layer MLP as in REPA (sihyun-yu/REPA models/sit.py:
Linear(D -> 2048) SiLU Linear(2048 -> 2048) SiLU Linear(2048 -> target dim), xavier-uniform
weights and zero biases). The classifier representation is the one of the ADVERSARIAL image,
taken from the same forward that yields the adversarial logits; the target is detached.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """MLP with `layers` Linear layers and SiLU between them (REPA's build_mlp shape)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"dra.head_layers: must be >= 1, got {layers}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        modules: list[nn.Module] = []
        for i in range(layers):
            modules.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                modules.append(nn.SiLU())
        self.mlp = nn.Sequential(*modules)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


def dra_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean_b cos(projected_b, target_b); no gradient reaches the target."""
    return -F.cosine_similarity(projected.float(), target.detach().float(), dim=1).mean()


class StoredTargets:
    """Targets gathered from feature stores aligned index-for-index with the image stores."""

    def __init__(self, real_features: np.ndarray, synthetic_features: np.ndarray | None):
        self.real = real_features
        self.synthetic = synthetic_features
        self.views = real_features.shape[1]
        self.dim = real_features.shape[2]
        if synthetic_features is not None and synthetic_features.shape[1:] != real_features.shape[1:]:
            raise ValueError("dra.features: the real and synthetic feature stores differ in (views, dim): "
                             f"{real_features.shape[1:]} vs {synthetic_features.shape[1:]}; "
                             "extract both with one setting")

    def __call__(self, store_index: np.ndarray, is_synthetic: np.ndarray, view: np.ndarray,
                 images01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Rows for images `store_index` of the real or synthetic store, view `view` of each."""
        target = np.empty((len(store_index), self.dim), dtype=np.float32)
        real = ~is_synthetic
        target[real] = self.real[store_index[real], view[real]]
        if is_synthetic.any():
            target[is_synthetic] = self.synthetic[store_index[is_synthetic], view[is_synthetic]]
        return torch.from_numpy(target).to(images01.device)


class OnlineTargets:
    """Targets computed on the fly by the frozen diffusion model on the clean augmented batch."""

    def __init__(self, extractor: Any, views: int):
        self.extractor = extractor
        self.views = views

    @torch.no_grad()
    def __call__(self, store_index: np.ndarray, is_synthetic: np.ndarray, view: np.ndarray,
                 images01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = None
        indices = torch.from_numpy(store_index.astype(np.int64))
        for v in range(self.views):
            chosen = np.flatnonzero(view == v)
            if len(chosen) == 0:
                continue
            rows = torch.from_numpy(chosen).to(images01.device)
            features = self.extractor(images01[rows], labels[rows], indices[chosen], v).float()
            if target is None:
                target = torch.empty(len(store_index), features.shape[1], device=images01.device)
            target[rows] = features
        return target
