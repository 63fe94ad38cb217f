"""Classifiers: DM-AT WideResNet shapes, parameter counts, padding, names, init; timm ViT-B/2."""

import math

import pytest
import torch
import torch.nn.functional as F

from dra.models import create_classifier

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)  # DM-AT wideresnetwithswish.py


def wrn(depth, width, classes=10):
    return create_classifier({"family": "wrn", "depth": depth, "width": width, "activation": "silu"},
                             classes, CIFAR10_MEAN, CIFAR10_STD)


def wrn_parameter_count(depth, width, classes):
    """Count from the layer shapes of DM-AT's wideresnetwithswish.py, independently of the module code."""
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    total = 3 * 16 * 9  # init_conv, bias-free
    for group in range(3):
        for block in range(n):
            c_in = widths[group] if block == 0 else widths[group + 1]
            c_out = widths[group + 1]
            total += 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out  # bn, conv, bn, conv
            if c_in != c_out:
                total += c_in * c_out  # 1x1 shortcut
    return total + 2 * widths[3] + widths[3] * classes + classes  # final bn, logits


@pytest.mark.parametrize("depth,width,classes", [(28, 10, 10), (34, 10, 10), (70, 16, 10), (28, 10, 100), (10, 2, 4)])
def test_parameter_counts_match_the_shapes(depth, width, classes):
    with torch.device("meta"):  # no memory for WRN-70-16's 267M parameters
        model = wrn(depth, width, classes)
    assert sum(p.numel() for p in model.parameters()) == wrn_parameter_count(depth, width, classes)


def test_wrn_28_10_is_36_5m_and_has_dmat_names():
    with torch.device("meta"):
        model = wrn(28, 10)
    assert sum(p.numel() for p in model.parameters()) == 36_479_194  # "36.5M" (RobustBench/DM-AT WRN-28-10)
    keys = model.state_dict().keys()
    for key in ("init_conv.weight", "layer.0.block.0.batchnorm_0.running_mean", "layer.0.block.0.shortcut.weight",
                "layer.2.block.3.conv_1.weight", "batchnorm.weight", "logits.weight", "logits.bias"):
        assert key in keys
    assert "layer.0.block.1.shortcut.weight" not in keys  # 1x1 shortcut only where channels change
    assert "mean" not in keys and "std" not in keys  # normalization constants are not checkpoint keys
    assert model.feature_dim == 640
    # DM-AT wideresnetwithswish.py
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_tiny_wrn_shapes_and_features_on_8x8():
    model = wrn(10, 2, classes=4)
    x = torch.rand(3, 3, 8, 8)
    logits, features = model.forward_features(x)
    assert logits.shape == (3, 4) and features.shape == (3, 128) and model.feature_dim == 128
    torch.testing.assert_close(model(x), logits)
    torch.testing.assert_close(model.logits(features), logits)


def test_same_padding_and_stride_two_geometry():
    model = wrn(10, 1).eval()
    block = model.layer[1].block[0]  # first block of group 2: stride 2, 16 -> 32 channels
    x = torch.randn(1, 16, 8, 8)
    pre = block.relu_0(block.batchnorm_0(x))
    # "SAME" for stride 2: pad 0 before, 1 after, convolution without padding (DM-AT wideresnetwithswish.py)
    expected = F.conv2d(F.pad(pre, (0, 1, 0, 1)), block.conv_0.weight, stride=2)
    expected = F.conv2d(block.relu_1(block.batchnorm_1(expected)), block.conv_1.weight, padding=1)
    expected = expected + F.conv2d(pre, block.shortcut.weight, stride=2)
    torch.testing.assert_close(block(x), expected)
    assert block.conv_0.padding == (0, 0) and block.conv_0.bias is None
    # stride 1, same channels: residual is the raw input, padding 1 on every side
    block = model.layer[0].block[0]
    pre = block.relu_0(block.batchnorm_0(x))
    expected = F.conv2d(F.pad(pre, (1, 1, 1, 1)), block.conv_0.weight)
    expected = x + F.conv2d(block.relu_1(block.batchnorm_1(expected)), block.conv_1.weight, padding=1)
    torch.testing.assert_close(block(x), expected)
    feature_map = model.layer(model.init_conv(torch.rand(2, 3, 32, 32)))
    assert feature_map.shape == (2, 64, 8, 8)  # 32 -> 32 -> 16 -> 8, as WRN-28-10's 640x8x8


def test_normalization_inside_the_model():
    torch.manual_seed(0)
    model = wrn(10, 1).eval()
    torch.manual_seed(0)
    plain = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 10, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    # images in [0, 1] go in; (x - mean) / std happens inside (DM-AT wideresnetwithswish.py)
    torch.testing.assert_close(model(x), plain((x - mean) / std))
    assert not torch.allclose(model(x), plain(x), atol=1e-3)


def test_initialization_rules():
    torch.manual_seed(0)
    model = wrn(28, 10)
    weight = model.layer[2].block[1].conv_0.weight  # 640 -> 640, 3x3: std sqrt(2 / (9 * 640))
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 640)), rel=0.01)
    assert weight.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert torch.all(model.batchnorm.weight == 1) and torch.all(model.batchnorm.bias == 0)
    assert torch.all(model.logits.bias == 0)


def test_vit_b2_for_32x32():
    with torch.device("meta"):
        model = create_classifier({"family": "timm", "name": "vit_base_patch16_224",
                                   "kwargs": {"img_size": 32, "patch_size": 2}}, 10, CIFAR10_MEAN, CIFAR10_STD)
    # timm 1.0.31: 85.27M parameters, patch embedding Conv2d(3, 768, k=2, s=2), 256 patches
    assert sum(p.numel() for p in model.parameters()) == 85_271_818
    assert model.net.patch_embed.proj.kernel_size == (2, 2) and model.net.patch_embed.num_patches == 256
    assert model.feature_dim == 768


def test_timm_wrapper_interface_and_normalization():
    arch = {"family": "timm", "name": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 8, "patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}}
    torch.manual_seed(0)
    model = create_classifier(arch, 5, CIFAR10_MEAN, CIFAR10_STD).eval()
    x = torch.rand(2, 3, 8, 8)
    logits, features = model.forward_features(x)
    assert logits.shape == (2, 5) and features.shape == (2, 16) and model.feature_dim == 16
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(logits, model.net((x - mean) / std))


@pytest.mark.parametrize("arch,message", [
    ({"family": "wrn", "depth": 27, "width": 10}, "arch.depth"),
    ({"family": "wrn", "width": 10}, "arch.depth"),
    ({"family": "wrn", "depth": 28, "width": 10, "activation": "gelu"}, "arch.activation"),
    ({"family": "timm", "name": "no_such_model"}, "arch.name"),
    ({"family": "resnet"}, "arch.family"),
])
def test_bad_arch_names_the_key(arch, message):
    with pytest.raises(ValueError, match=message):
        create_classifier(arch, 10, CIFAR10_MEAN, CIFAR10_STD)
