"""Classifiers: `create_classifier(arch, num_classes, mean, std)` (docs/architecture.md, Classifiers).

Each family registers its builder in its own module (dra.registry.MODEL_FAMILIES): wrn
(dra.models.wideresnet), timm (dra.models.timm_models), edm_encoder (dra.models.edm_encoder, imported
only when asked for: it loads the diffusion code). A new family is one module here plus config.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from dra.models.timm_models import TimmClassifier
from dra.models.wideresnet import WideResNet
from dra.registry import MODEL_FAMILIES


def create_classifier(arch: dict[str, Any], num_classes: int, mean: Sequence[float],
                      std: Sequence[float]) -> nn.Module:
    """Build the classifier an `arch` config entry describes; inputs are images in [0, 1].

    {family: wrn, depth, width, activation} -> DM-AT's WideResNet;
    {family: timm, name, kwargs, pretrained, weights} -> a timm model, randomly initialized, or with
    pretrained: true from the weights file (the download rule's) or the Hugging Face cache;
    {family: edm_encoder, network, weights, layer, sigma, noise_seed} -> the diffusion U-Net up to the
    DRA layer plus a linear head (dra.models.edm_encoder; resolve_recipe fills in the paths).
    """
    family = arch.get("family")
    if family not in MODEL_FAMILIES:
        raise ValueError(MODEL_FAMILIES.unknown_message(family))
    for key in MODEL_FAMILIES.meta(family).get("recipe_keys", {}):
        if key not in arch:
            raise ValueError(f"arch.{key}: missing for family {family!r}")
    return MODEL_FAMILIES.get(family)(arch, num_classes, mean, std)


__all__ = ["create_classifier", "WideResNet", "TimmClassifier"]
