"""Classifiers: `create_classifier(arch, num_classes, mean, std)` (docs/architecture.md, Classifiers)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from dra.models.timm_models import TimmClassifier
from dra.models.wideresnet import WideResNet


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
    if family == "wrn":
        for key in ("depth", "width"):
            if key not in arch:
                raise ValueError(f"arch.{key}: missing for family 'wrn' (e.g. depth: 28, width: 10)")
        return WideResNet(int(arch["depth"]), int(arch["width"]), num_classes, mean, std,
                          activation=arch.get("activation", "silu"))
    if family == "timm":
        if "name" not in arch:
            raise ValueError("arch.name: missing for family 'timm' (e.g. name: vit_base_patch16_224)")
        kwargs = dict(arch.get("kwargs") or {})
        pretrained = bool(arch.get("pretrained", kwargs.pop("pretrained", False)))
        return TimmClassifier(arch["name"], num_classes, mean, std, kwargs=kwargs, pretrained=pretrained,
                              weights_file=arch.get("weights"))
    if family == "edm_encoder":
        from dra.models.edm_encoder import create_edm_encoder_classifier

        return create_edm_encoder_classifier(arch, num_classes)
    raise ValueError(f"arch.family: expected 'wrn', 'timm' or 'edm_encoder', got {family!r}")


__all__ = ["create_classifier", "WideResNet", "TimmClassifier"]
