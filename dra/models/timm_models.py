"""timm classifiers (ViT-B/2 for 32x32, ImageNet backbones) behind the interface of dra.models.

ViT-B/2 = timm's vit_base_patch16_224 with img_size=32, patch_size=2, pretrained=False
(reference/evaluation.md 4: PatchEmbed Conv2d(3, 768, k=2, s=2), 256 patches, 85.27M parameters).
"""

from __future__ import annotations

from typing import Any, Sequence

import timm
import torch
from torch import nn


class TimmClassifier(nn.Module):
    """A timm model taking images in [0, 1]; normalization happens inside, like the WRN."""

    def __init__(self, name: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 kwargs: dict[str, Any] | None = None, pretrained: bool = False):
        super().__init__()
        if not timm.is_model(name):
            raise ValueError(f"arch.name: {name!r} is not a timm model name (see timm.list_models())")
        self.net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **(kwargs or {}))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.feature_dim = self.net.num_features

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.net.forward_features((x - self.mean) / self.std)
        # pre_logits: the pooled (and, for ViT, fc-normed) representation the classifier head reads.
        features = self.net.forward_head(tokens, pre_logits=True)
        return self.net.get_classifier()(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]
