"""DINOv3 classifiers for the ImageNet track (paper section 5; timm 1.0.31 eva.py), built through
dra.models.create_classifier, and their pretrained weights read from the Hugging Face cache only."""

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from dra.models import create_classifier
from dra.models.timm_models import PretrainedWeightsMissing, TimmClassifier

torch.set_num_threads(1)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONVNEXT = "convnext_base.dinov3_lvd1689m"
VIT = "vit_base_patch16_dinov3.lvd1689m"
# Small variants of the same timm entries (kwargs override the architecture), for real forwards.
TINY = {CONVNEXT: dict(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128)),
        VIT: dict(depth=1, embed_dim=64, num_heads=2, global_pool="token")}


def build(name, kwargs, pretrained=False, num_classes=1000, device="cpu"):
    arch = {"family": "timm", "name": name, "kwargs": dict(kwargs, pretrained=pretrained)}
    with torch.device(device):
        return create_classifier(arch, num_classes, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("name, kwargs, params, dim", [
    # Counted with timm 1.0.31 (pretrained=False, num_classes=1000); ConvNeXt-B is the known 88.6M,
    # ViT-B/16 DINOv3 86.4M (4 register tokens, no QKV bias, timm eva.py).
    (CONVNEXT, {}, 88_591_464, 1024),
    (VIT, {"global_pool": "token"}, 86_410_216, 768),
])
def test_dinov3_backbones_parameter_counts_and_224_shapes(name, kwargs, params, dim):
    model = build(name, kwargs, device="meta")  # shapes only: nothing is allocated
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.feature_dim == dim
    logits, features = model.forward_features(torch.empty(2, 3, 224, 224, device="meta"))
    assert logits.shape == (2, 1000) and features.shape == (2, dim)


def test_vit_dinov3_pools_the_cls_token():
    # Upstream DINOv3 classifies from the CLS token: global_pool='token' must give tokens[:, 0].
    torch.manual_seed(0)
    model = build(VIT, TINY[VIT], num_classes=7).eval()
    x = torch.rand(2, 3, 224, 224)
    logits, features = model.forward_features(x)
    tokens = model.net.forward_features((x - model.mean) / model.std)
    assert tokens.shape == (2, 1 + 4 + 14 * 14, 64)  # CLS + 4 registers + 224/16 squared patches
    torch.testing.assert_close(features, tokens[:, 0])
    torch.testing.assert_close(logits, model.net.head(tokens[:, 0]))


def test_convnext_normalizes_inside_and_forward_is_logits():
    torch.manual_seed(0)
    model = build(CONVNEXT, TINY[CONVNEXT], num_classes=5).eval()
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.net((x - mean) / std))
    assert model.forward_features(x)[1].shape == (2, 128)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("name", [CONVNEXT, VIT])
def test_missing_cache_stops_with_one_message(empty_hub_cache, name):
    with pytest.raises(PretrainedWeightsMissing) as caught:
        build(name, TINY[name], pretrained=True)
    message = str(caught.value)
    assert name in message and str(empty_hub_cache) in message and "HF_HUB_CACHE" in message
    assert f"timm.create_model('{name}', pretrained=True)" in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no chained HTTP errors


def write_cached_weights(cache, name, state):
    """The hub cache layout timm's download leaves: models--<org>--<repo>/{refs/main, snapshots/<rev>/...}."""
    repo = cache / f"models--timm--{name}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")


def test_pretrained_weights_load_from_the_cache_with_a_new_head(empty_hub_cache):
    import timm

    torch.manual_seed(1)
    released = timm.create_model(CONVNEXT, pretrained=False, num_classes=0, **TINY[CONVNEXT])  # DINOv3: no head
    write_cached_weights(empty_hub_cache, CONVNEXT, released.state_dict())
    model = build(CONVNEXT, TINY[CONVNEXT], pretrained=True, num_classes=10)
    ours = model.net.state_dict()
    for key, value in released.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    assert ours["head.fc.weight"].shape == (10, 128)

    with pytest.raises(ValueError, match="data.mean"):
        TimmClassifier(CONVNEXT, 10, (0.5, 0.5, 0.5), IMAGENET_STD, kwargs=TINY[CONVNEXT], pretrained=True)


def test_pretrained_weights_load_from_the_download_rules_file(tmp_path, empty_hub_cache):
    import timm

    torch.manual_seed(2)
    released = timm.create_model(VIT, pretrained=False, num_classes=0, **TINY[VIT])
    weights = tmp_path / "pretrained" / "vit-b-16" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in released.state_dict().items()}, weights)
    arch = {"family": "timm", "name": VIT, "kwargs": TINY[VIT], "pretrained": True, "weights": str(weights)}
    model = create_classifier(arch, 10, IMAGENET_MEAN, IMAGENET_STD)
    ours = model.net.state_dict()
    for key, value in released.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    assert ours["head.weight"].shape == (10, 64)  # a new 10-class head on the CLS token
    weights.unlink()
    with pytest.raises(PretrainedWeightsMissing, match=f"{weights} does not exist.*download_pretrained"):
        create_classifier(arch, 10, IMAGENET_MEAN, IMAGENET_STD)


def test_corrupt_weights_file_names_the_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")  # a cut download
    arch = {"family": "timm", "name": CONVNEXT, "kwargs": TINY[CONVNEXT], "pretrained": True, "weights": str(weights)}
    with pytest.raises(PretrainedWeightsMissing, match=f"{weights} of timm model .* cannot be loaded.*delete the file"):
        create_classifier(arch, 10, IMAGENET_MEAN, IMAGENET_STD)
