"""EDM U-Net and preconditioning against NVlabs/edm training/networks.py (names, shapes, formulas)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dra.diffusion.edm import (CIFAR10_DDPMPP_KWARGS, Conv2d, EDMPrecond, GroupNorm, PositionalEmbedding,
                               SongUNet, UnsupportedArchitecture, one_hot_labels)

torch.set_num_threads(1)


def block_params(cin, cout, emb, attention=False, resample=False):
    """Parameters of one DDPM++ UNetBlock (NVlabs/edm networks.py), counted from its layer shapes."""
    n = 2 * cin + (9 * cin * cout + cout) + (emb * cout + cout) + 2 * cout + (9 * cout * cout + cout)
    if cin != cout or resample:
        n += cin * cout + cout  # 1x1 skip (resample_proj=True)
    if attention:
        n += 2 * cout + (cout * 3 * cout + 3 * cout) + (cout * cout + cout)
    return n


def cifar10_param_count(label_dim=10, augment_dim=9):
    """The CIFAR-10 DDPM++ net of NVlabs/edm train.py --arch=ddpmpp, block by block."""
    emb, noise = 512, 128
    n = (label_dim * noise + noise if label_dim else 0) + augment_dim * noise
    n += noise * emb + emb + emb * emb + emb
    n += 9 * 3 * 128 + 128  # 32x32_conv
    n += block_params(128, 256, emb) + 3 * block_params(256, 256, emb)  # 32x32_block0..3
    n += block_params(256, 256, emb, resample=True) + 4 * block_params(256, 256, emb, attention=True)  # 16x16
    n += block_params(256, 256, emb, resample=True) + 4 * block_params(256, 256, emb)  # 8x8
    n += block_params(256, 256, emb, attention=True) + block_params(256, 256, emb)  # 8x8_in0, in1
    n += 5 * block_params(512, 256, emb)  # 8x8_block0..4
    n += block_params(256, 256, emb, resample=True)  # 16x16_up
    n += 4 * block_params(512, 256, emb) + block_params(512, 256, emb, attention=True)
    n += block_params(256, 256, emb, resample=True)  # 32x32_up
    n += 4 * block_params(512, 256, emb) + block_params(384, 256, emb)
    n += 2 * 256 + 9 * 256 * 3 + 3  # aux_norm, aux_conv
    return n


@pytest.fixture(scope="module")
def cifar_net():
    torch.manual_seed(0)
    return EDMPrecond(**CIFAR10_DDPMPP_KWARGS).eval()


def test_cifar10_parameter_count_matches_module_shapes(cifar_net):
    count = sum(p.numel() for p in cifar_net.parameters())
    assert count == cifar10_param_count() == 55_735_299  # EDM paper: DDPM++ "56M"
    uncond = EDMPrecond(**dict(CIFAR10_DDPMPP_KWARGS, label_dim=0))
    assert sum(p.numel() for p in uncond.parameters()) == cifar10_param_count(label_dim=0)


def test_cifar10_module_names_and_channels(cifar_net):
    # networks.py SongUNet: encoder/decoder keys in order, with (in, out) channels.
    enc, dec = cifar_net.model.enc, cifar_net.model.dec
    assert list(enc) == (["32x32_conv"] + [f"32x32_block{i}" for i in range(4)]
                         + ["16x16_down"] + [f"16x16_block{i}" for i in range(4)]
                         + ["8x8_down"] + [f"8x8_block{i}" for i in range(4)])
    assert list(dec) == (["8x8_in0", "8x8_in1"] + [f"8x8_block{i}" for i in range(5)]
                         + ["16x16_up"] + [f"16x16_block{i}" for i in range(5)]
                         + ["32x32_up"] + [f"32x32_block{i}" for i in range(5)] + ["32x32_aux_norm", "32x32_aux_conv"])
    assert (dec["8x8_block0"].in_channels, dec["8x8_block0"].out_channels) == (512, 256)
    assert (dec["32x32_block4"].in_channels, dec["32x32_aux_conv"].out_channels) == (384, 3)
    with_attention = {name for name, block in list(enc.items()) + list(dec.items()) if getattr(block, "num_heads", 0)}
    assert with_attention == {f"16x16_block{i}" for i in range(4)} | {"8x8_in0", "16x16_block4"}
    keys = cifar_net.state_dict().keys()
    for key in ["model.map_label.weight", "model.map_augment.weight", "model.map_layer0.bias",
                "model.map_layer1.weight", "model.enc.16x16_down.conv0.resample_filter",
                "model.enc.16x16_down.skip.weight", "model.dec.8x8_in0.qkv.weight", "model.dec.8x8_in0.proj.bias",
                "model.dec.32x32_aux_norm.weight"]:
        assert key in keys
    assert "model.map_augment.bias" not in keys  # bias=False in NVIDIA's net
    assert "model.enc.32x32_block0.conv0.resample_filter" not in keys  # only resampling convs carry the filter


def test_output_shape_and_feature_shapes(cifar_net):
    x = torch.randn(2, 3, 32, 32)
    seen = {}

    def record(_module, _inputs, output):
        seen["mid"] = output.shape

    handle = cifar_net.model.dec["8x8_in1"].register_forward_hook(record)
    with torch.no_grad():
        out = cifar_net(x, torch.tensor([0.1, 2.0]), one_hot_labels(torch.tensor([3, 7]), 10))
    handle.remove()
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert seen["mid"] == (2, 256, 8, 8)  # SongUNet: bottleneck is B x 256 x 8 x 8


def test_preconditioning_coefficients_hand_computed():
    net = EDMPrecond(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1], num_blocks=1,
                     attn_resolutions=[])
    c_skip, c_out, c_in, c_noise = net.coefficients(torch.tensor([0.5, 2.0], dtype=torch.float64))
    # sigma_data = 0.5 (EDMPrecond): sigma 0.5 -> 0.25/0.5, 0.25/sqrt(0.5), 1/sqrt(0.5), ln(0.5)/4.
    torch.testing.assert_close(c_skip, torch.tensor([0.5, 0.25 / 4.25], dtype=torch.float64))
    torch.testing.assert_close(c_out, torch.tensor([0.25 / math.sqrt(0.5), 1.0 / math.sqrt(4.25)], dtype=torch.float64))
    torch.testing.assert_close(c_in, torch.tensor([1 / math.sqrt(0.5), 1 / math.sqrt(4.25)], dtype=torch.float64))
    torch.testing.assert_close(c_noise, torch.tensor([math.log(0.5) / 4, math.log(2.0) / 4], dtype=torch.float64))


def test_forward_combines_skip_and_network_output():
    net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=4, model_channels=16, channel_mult=[1],
                     num_blocks=1, attn_resolutions=[])
    calls = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, noise_labels, class_labels, augment_labels=None):
            calls.update(x=x, noise=noise_labels, labels=class_labels)
            return torch.full_like(x, 3.0)

    net.model = Recorder()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.3, 5.0], dtype=torch.float64)
    out = net(x, sigma)  # labels None on a conditional net -> zero label vector (EDMPrecond)
    s = sigma.reshape(-1, 1, 1, 1)
    expected = 0.25 / (s ** 2 + 0.25) * x + s * 0.5 / (s ** 2 + 0.25).sqrt() * 3.0
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(calls["x"].double(), x / (0.25 + s ** 2).sqrt(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(calls["noise"].double(), sigma.log() / 4, rtol=1e-6, atol=1e-6)
    assert torch.equal(calls["labels"], torch.zeros(1, 4))


def test_positional_embedding_endpoint_and_swap():
    emb = PositionalEmbedding(4, endpoint=True)(torch.tensor([2.0]))
    # endpoint=True: freqs (1/10000)^(k/(C/2-1)) = [1, 1e-4]; output [cos | sin].
    torch.testing.assert_close(emb, torch.tensor([[math.cos(2), math.cos(2e-4), math.sin(2), math.sin(2e-4)]]))
    no_endpoint = PositionalEmbedding(4, endpoint=False)(torch.tensor([2.0]))
    torch.testing.assert_close(no_endpoint[0, 1], torch.tensor(math.cos(2 * 0.01)))


def test_groupnorm_groups_and_eps():
    assert GroupNorm(256).num_groups == 32
    assert GroupNorm(8).num_groups == 2  # at least 4 channels per group
    unet = SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1],
                    num_blocks=1, attn_resolutions=[])
    assert unet.enc["8x8_block0"].norm0.eps == 1e-6 and unet.dec["8x8_aux_norm"].eps == 1e-6
    assert unet.enc["8x8_block0"].skip_scale == pytest.approx(math.sqrt(0.5))


def test_resample_filter_is_box_average_and_nearest_upsampling():
    x = torch.randn(1, 2, 4, 4)
    down = Conv2d(2, 2, kernel=0, down=True)
    up = Conv2d(2, 2, kernel=0, up=True)
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_init_rules(cifar_net):
    block = cifar_net.model.enc["16x16_block0"]
    xavier = math.sqrt(6 / (256 * 9 + 256 * 9))
    assert block.conv0.weight.abs().max() <= xavier and block.conv0.weight.abs().max() > 0.9 * xavier
    assert block.conv1.weight.abs().max() <= 1e-5 * xavier  # init_zero: xavier * 1e-5
    qkv_bound = math.sqrt(0.2) * math.sqrt(6 / (256 + 768))
    assert qkv_bound * 0.9 < block.qkv.weight.abs().max() <= qkv_bound
    assert torch.count_nonzero(block.conv0.bias) == 0


def test_unsupported_variants_are_refused():
    with pytest.raises(UnsupportedArchitecture, match="DDPM"):
        EDMPrecond(img_resolution=8, img_channels=3, embedding_type="fourier", encoder_type="residual")
    with pytest.raises(UnsupportedArchitecture, match="DhariwalUNet"):
        EDMPrecond(img_resolution=8, img_channels=3, model_type="DhariwalUNet")
    with pytest.raises(ValueError, match="class labels"):
        one_hot_labels(torch.tensor([0, 10]), 10)
