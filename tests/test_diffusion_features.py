"""Diffusion feature extraction: reproducible noise, the hooked block, the feature store."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dra.data.store import ImageStoreWriter, open_feature_store
from dra.diffusion.edm import EDMPrecond, one_hot_labels
from dra.diffusion.features import P_MEAN, P_STD, DiffusionFeatureExtractor, extract_feature_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = EDMPrecond(img_resolution=8, img_channels=3, label_dim=3, model_channels=16, channel_mult=[1, 2],
                       num_blocks=1, attn_resolutions=[4], dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def images_and_labels(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_features_do_not_depend_on_batch_composition(net):
    extractor = DiffusionFeatureExtractor(net, "model.dec.4x4_in1", sigma=0.1, extra_view=True, seed=3)
    x, y = images_and_labels(6)
    with torch.no_grad():
        for view in (0, 1):
            whole = extractor(x, y, range(10, 16), view)
            assert whole.shape == (6, 32) and whole.dtype == torch.float32
            order = [5, 2, 0, 4, 1, 3]
            shuffled = extractor(x[order], y[order], [10 + i for i in order], view)
            torch.testing.assert_close(shuffled, whole[order], rtol=1e-5, atol=1e-6)
            pieces = torch.cat([extractor(x[i:i + 2], y[i:i + 2], range(10 + i, 12 + i), view) for i in (0, 2, 4)])
            torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
        # Another index means other noise, and the two views differ.
        assert not torch.allclose(extractor(x[:1], y[:1], [11], 0), whole[:1] * 0 + extractor(x[:1], y[:1], [10], 0))
        assert not torch.allclose(extractor(x, y, range(10, 16), 0), extractor(x, y, range(10, 16), 1))


def manual_bottleneck(net, noisy, sigma, class_labels):
    """The input of dec['4x4_in1'] -> its output, computed block by block without hooks."""
    unet = net.model
    c_in, c_noise = 1 / math.sqrt(0.25 + sigma ** 2), math.log(sigma) / 4
    emb = unet.map_noise(torch.full((noisy.shape[0],), c_noise))
    emb = torch.cat([emb[:, emb.shape[1] // 2:], emb[:, :emb.shape[1] // 2]], dim=1)  # [sin | cos]
    emb = emb + unet.map_label(class_labels * math.sqrt(3))
    emb = F.silu(unet.map_layer1(F.silu(unet.map_layer0(emb))))
    x = noisy * c_in
    for name, block in unet.enc.items():
        x = block(x) if name.endswith("_conv") else block(x, emb)
    x = unet.dec["4x4_in0"](x, emb)
    return unet.dec["4x4_in1"](x, emb)


def test_hook_returns_the_pooled_named_block(net):
    extractor = DiffusionFeatureExtractor(net, "model.dec.4x4_in1", sigma=0.3, seed=1)
    x, y = images_and_labels(4, seed=1)
    sigmas, noise = extractor.noise(range(4), 0, (3, 8, 8))
    assert torch.all(sigmas == 0.3)
    with torch.no_grad():
        got = extractor(x, y, range(4))
        want = manual_bottleneck(net, x * 2 - 1 + 0.3 * noise, 0.3, one_hot_labels(y, 3)).mean(dim=(2, 3))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_labels_condition_and_multi_layer_output(net):
    x, y = images_and_labels(3)
    with torch.no_grad():
        with_labels = DiffusionFeatureExtractor(net, "model.dec.8x8_block1", 0.1)(x, y, range(3))
        zero_label = DiffusionFeatureExtractor(net, "model.dec.8x8_block1", 0.1, use_labels=False)(x, y, range(3))
        both = DiffusionFeatureExtractor(net, ["model.dec.4x4_in0", "model.dec.8x8_block1"], 0.1)(x, y, range(3))
    assert not torch.allclose(with_labels, zero_label, atol=1e-4)
    assert set(both) == {"model.dec.4x4_in0", "model.dec.8x8_block1"}
    torch.testing.assert_close(both["model.dec.8x8_block1"], with_labels)
    assert both["model.dec.4x4_in0"].shape == (3, 32) and with_labels.shape == (3, 16)


def test_extra_view_sigma_follows_edm_training_distribution(net):
    extractor = DiffusionFeatureExtractor(net, "model.dec.4x4_in1", 0.1, extra_view=True, seed=0)
    sigmas, _ = extractor.noise(range(4000), 1, (1, 1, 1))
    log_sigma = sigmas.double().log()
    # ln(sigma) ~ N(-1.2, 1.2^2) (edm training/loss.py): standard errors 0.019 (mean), 0.013 (std).
    assert abs(log_sigma.mean().item() - P_MEAN) < 0.06
    assert abs(log_sigma.std().item() - P_STD) < 0.04
    again, _ = extractor.noise([17], 1, (1, 1, 1))
    assert again[0] == sigmas[17]


def test_bad_layer_and_view_are_refused(net):
    with pytest.raises(KeyError, match="model.dec.4x4_in1"):
        DiffusionFeatureExtractor(net, "model.dec.nope", 0.1)
    extractor = DiffusionFeatureExtractor(net, "model.dec.4x4_in1", 0.1)
    x, y = images_and_labels(2)
    with pytest.raises(ValueError, match="view"):
        extractor(x, y, range(2), view=1)


def test_extract_feature_store_matches_extractor(tmp_path, net):
    x, y = images_and_labels(5, seed=4)
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with ImageStoreWriter(tmp_path / "images", 5, 8, 8, 3, meta={"source": "test"}) as writer:
        writer.write(0, pixels, y.numpy())
    out = extract_feature_store(net, tmp_path / "images", tmp_path / "features", "model.dec.4x4_in1", 0.1, views=2,
                                batch_size=2, seed=7, diffusion_model="tiny", shard_size=3)
    store = open_feature_store(out)
    assert store.features.shape == (5, 2, 32) and store.features.dtype == np.float16
    assert store.meta["layer"] == "model.dec.4x4_in1" and store.meta["extra_view"] is True
    assert not (tmp_path / "features.state").exists()
    extractor = DiffusionFeatureExtractor(net, "model.dec.4x4_in1", 0.1, extra_view=True, seed=7)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        for view in (0, 1):
            want = extractor(images, y, range(5), view).numpy()
            np.testing.assert_allclose(store.features[:, view].astype(np.float32), want, rtol=2e-3, atol=2e-3)
