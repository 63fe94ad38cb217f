"""timm classifiers (ViT-B/2 for 32x32, ImageNet backbones) behind the interface of dra.models.

ViT-B/2 = timm's vit_base_patch16_224 with img_size=32, patch_size=2, pretrained=False
(timm 1.0.31, vision_transformer.py: PatchEmbed Conv2d(3, 768, k=2, s=2), 256 patches, 85.27M parameters).

ImageNet backbones start from pretrained weights (paper section 5: DINOv3 ConvNeXt-B and ViT-B/16
released via timm 1.0.31, eva.py and convnext.py). Training never downloads: the weights are read from a file
the workflow's download rule fetched into the data folder (arch.weights of the recipe), or, outside
the workflow, from the local Hugging Face cache. A missing file stops with one message saying how
to get it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from dra.registry import MODEL_FAMILIES

# timm (and the torchvision it imports) is imported where a timm model is built: importing it takes
# about 2 CPU-seconds, which every job that imports dra.models paid, the WideResNet ones included


class TimmClassifier(nn.Module):
    """A timm model taking images in [0, 1]; normalization happens inside, like the WRN."""

    def __init__(self, name: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 kwargs: dict[str, Any] | None = None, pretrained: bool = False, weights_file: str | None = None):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ValueError(f"arch.name: {name!r} is not a timm model name (see timm.list_models())")
        if pretrained:
            self.net = create_pretrained(name, num_classes, mean, std, kwargs, weights_file)
        else:
            self.net = timm.create_model(name, pretrained=False, num_classes=num_classes, **(kwargs or {}))
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


# --- pretrained weights from the local Hugging Face cache (ImageNet track) ---------------------

#: The names timm's hub loader tries, in its order (timm/models/_hub.py load_state_dict_from_hf).
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsMissing(FileNotFoundError):
    """The pretrained weights of a timm model are not in the local Hugging Face cache."""


def hub_cache_dir() -> str:
    """The Hugging Face hub cache timm downloads into (HF_HUB_CACHE, else $HF_HOME/hub)."""
    import huggingface_hub

    return huggingface_hub.constants.HF_HUB_CACHE


def cached_pretrained_file(name: str) -> str:
    """Path of the cached weight file of timm model ``name``, or PretrainedWeightsMissing."""
    import huggingface_hub
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"arch.name: {name!r} has no pretrained weights on the Hugging Face hub in timm "
                         f"{timm.__version__} (see timm.list_pretrained())")
    cache = hub_cache_dir()
    repo_id = cfg.hf_hub_id.split("@")[0]
    for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else HUB_WEIGHT_FILES):
        found = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        if isinstance(found, str):
            return found
    raise PretrainedWeightsMissing(
        f"pretrained weights of timm model {name!r} (hub repo {repo_id}) are not in the Hugging Face cache "
        f"{cache} (set by HF_HUB_CACHE, else $HF_HOME/hub, default ~/.cache/huggingface/hub). Fill the cache "
        f"on a machine with internet access, with the same HF_HUB_CACHE/HF_HOME: "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
        f"(or run the workflow's download rule there), then copy the cache folder here.")


def create_pretrained(name: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                      kwargs: dict[str, Any] | None = None, weights_file: str | None = None) -> nn.Module:
    """timm model ``name`` with its pretrained weights and a new ``num_classes`` head.

    The weights are loaded from ``weights_file`` (the download rule's file) or else from the
    Hugging Face cache, through timm's ``file`` source, so nothing reaches the network.
    ``mean``/``std`` must be the normalization the weights were trained with: fine-tuning with
    another one silently starts from a shifted input distribution.
    """
    import timm
    from safetensors import SafetensorError

    if weights_file is not None:
        if not os.path.isfile(weights_file):
            raise PretrainedWeightsMissing(
                f"pretrained weights of timm model {name!r} are missing: {weights_file} does not exist. It is "
                f"written by the workflow's download_pretrained rule (on a host with internet): "
                f"snakemake {weights_file}")
        path = weights_file
    else:
        path = cached_pretrained_file(name)
    cfg = timm.models.get_pretrained_cfg(name)
    for key, given in (("mean", mean), ("std", std)):
        expected = cfg.to_dict().get(key)
        if expected is not None and (len(given) != len(expected)
                                     or any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(given, expected))):
            raise ValueError(f"data.{key} {list(given)} differs from the {key} {list(expected)} the pretrained "
                             f"weights of {name!r} expect; set data.{key} to it")
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay={"file": path}, **(kwargs or {}))
    except (RuntimeError, OSError, ValueError, SafetensorError) as error:
        # a truncated or foreign file (no checksum is published for the DINOv3 weights), or weights
        # of another architecture: say which file and how to get the right one
        raise PretrainedWeightsMissing(
            f"pretrained weights {path} of timm model {name!r} cannot be loaded ({str(error)[:300]}); delete the "
            "file and fetch it again (the download_pretrained rule, or timm's download into the cache)") from None


# pretrained: start from these weights (fetched by the download_pretrained rule)
@MODEL_FAMILIES.register(
    "timm", required=("name",), pretrained=True,
    keys={"name": {"type": "string"}, "kwargs": {"type": "object"}, "pretrained": {"$ref": "#/$defs/download"}},
    recipe_keys={"name": {"type": "string", "minLength": 1, "description": "a timm model name"}})
def build_timm_classifier(arch: dict, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> TimmClassifier:
    """{family: timm, name, kwargs, pretrained, weights}: a timm model, randomly initialized, or with
    pretrained: true from the weights file (the download rule's) or the Hugging Face cache."""
    kwargs = dict(arch.get("kwargs") or {})
    pretrained = bool(arch.get("pretrained", kwargs.pop("pretrained", False)))
    return TimmClassifier(arch["name"], num_classes, mean, std, kwargs=kwargs, pretrained=pretrained,
                          weights_file=arch.get("weights"))

def save_random_pretrained(name: str, path: str | os.PathLike, seed: int, kwargs: dict[str, Any] | None = None) -> None:
    """Randomly initialised weights of timm model ``name`` in the layout of its released
    pretrained file (safetensors, with the release's classifier: none for a DINOv3 backbone),
    which create_pretrained loads unchanged: the canary's stand-in for the download."""
    import timm
    from safetensors.torch import save_file

    from dra.io import atomic_file

    released_classes = timm.models.get_pretrained_cfg(name).to_dict().get("num_classes", 0)
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False, num_classes=released_classes, **(kwargs or {}))
    with atomic_file(path) as tmp:
        save_file({key: value.contiguous() for key, value in net.state_dict().items()}, str(tmp))
