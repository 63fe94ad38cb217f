"""Linear probes on diffusion features and their PGD robustness with the noise held fixed."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dra.data.store import ImageStoreWriter
from dra.diffusion.checkpoint import save_edm
from dra.diffusion.edm import EDMPrecond
from dra.diffusion.probe import (decoder_blocks, fit_linear_probe, pgd_from_clean, probe_grid, probe_robustness,
                                 validate_features)

torch.set_num_threads(1)
KWARGS = dict(img_resolution=8, img_channels=3, label_dim=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
              attn_resolutions=[4], dropout=0.0)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = EDMPrecond(**KWARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def brightness_classes(n, seed):
    """Flat images whose class is their brightness band: linearly separable pooled features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    level = 0.15 + 0.3 * labels.float() + 0.05 * torch.rand(n, generator=g)
    return level[:, None, None, None].expand(n, 3, 8, 8).contiguous(), labels


def test_linear_probe_reproduces_sklearn_logits():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, 0, 0, 2]
    labels = rng.integers(0, 3, 60)
    probe = fit_linear_probe(features, labels)
    mean, scale = features.mean(0), features.std(0) + 1e-6
    reference = LogisticRegression(max_iter=2000, random_state=0).fit((features - mean) / scale, labels)
    with torch.no_grad():
        logits = probe(torch.tensor(features, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(logits, reference.decision_function((features - mean) / scale), rtol=1e-4, atol=1e-4)


def test_probe_grid_finds_separable_classes(net):
    layers = ["model.dec.4x4_in1", "model.dec.8x8_block1"]
    table, probes = probe_grid(net, brightness_classes(60, 0), brightness_classes(30, 1), brightness_classes(30, 2),
                               layers, sigmas=[0.01, 0.1], batch_size=32)
    assert list(table.columns[:3]) == ["layer", "sigma", "dim"] and len(table) == 4
    assert set(probes) == {(layer, s) for layer in layers for s in (0.01, 0.1)}
    assert table["test_accuracy"].max() == 1.0  # brightness bands are separable at low noise
    assert table.set_index("layer").loc["model.dec.4x4_in1", "dim"].tolist() == [16, 16]


def test_pgd_reaches_the_linear_worst_case():
    # Two classes with logits (0, w.x): the cross-entropy of class 0 grows with w.x, so the worst
    # L-inf perturbation moves every pixel by eps along sign(w) (a zero weight leaves its pixel).
    w = torch.tensor([1.0, -2.0, 0.5, 0.0])

    def logits(adv):
        return torch.stack([torch.zeros(len(adv)), adv @ w], dim=1)

    x = torch.full((1, 4), 0.5)
    adv = pgd_from_clean(logits, x, torch.zeros(1, dtype=torch.long), eps=0.1, steps=5, step_size=0.05)
    torch.testing.assert_close(adv, torch.tensor([[0.6, 0.4, 0.6, 0.5]]))
    clipped = pgd_from_clean(logits, torch.tensor([[0.95, 0.02, 0.5, 0.5]]), torch.zeros(1, dtype=torch.long),
                             eps=0.1, steps=3, step_size=0.1)
    torch.testing.assert_close(clipped, torch.tensor([[1.0, 0.0, 0.6, 0.5]]))


def test_robustness_is_deterministic_and_monotone(net):
    layer, sigma = "model.dec.4x4_in1", 0.05
    train = brightness_classes(60, 0)
    table, probes = probe_grid(net, train, brightness_classes(9, 1), brightness_classes(9, 2), [layer], [sigma])
    images, labels = brightness_classes(24, 3)
    eps = [0, 2 / 255, 0.2]
    first = probe_robustness(net, probes[(layer, sigma)], layer, sigma, images, labels, 500, eps, steps=5,
                             step_factor=2.5)
    second = probe_robustness(net, probes[(layer, sigma)], layer, sigma, images, labels, 500, eps, steps=5,
                             step_factor=2.5)
    pd.testing.assert_frame_equal(first, second)  # noise held fixed: the attacked function is deterministic
    accuracy = first["robust_accuracy"].tolist()
    assert accuracy[0] == 1.0 and accuracy[0] >= accuracy[1] >= accuracy[2]
    assert accuracy[2] < 0.5  # 0.2 spans the gap between brightness bands (0.3 apart)


def test_decoder_blocks_lists_unet_blocks_only(net):
    assert decoder_blocks(net) == ["model.dec.4x4_in0", "model.dec.4x4_in1", "model.dec.4x4_block0",
                                   "model.dec.4x4_block1", "model.dec.8x8_up", "model.dec.8x8_block0",
                                   "model.dec.8x8_block1"]


@pytest.mark.slow
def test_validate_features_writes_tables_and_figures(tmp_path, net):
    save_edm(net, KWARGS, tmp_path / "edm.safetensors", tmp_path / "edm.json")
    for name, seed, n in (("train", 0, 40), ("test", 1, 20)):
        images, labels = brightness_classes(n, seed)
        with ImageStoreWriter(tmp_path / name, n, 8, 8, 3, meta={"source": "test"}) as writer:
            writer.write(0, (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), labels.numpy())
    out = tmp_path / "out"
    summary = validate_features(tmp_path / "edm.safetensors", tmp_path / "edm.json", tmp_path / "train",
                                tmp_path / "test", out / "probe.csv", out / "probe.png", out / "robustness.csv",
                                out / "robustness.png", sigmas=[0.05, 0.5],
                                layers=["model.dec.4x4_in1", "model.dec.8x8_block1"], eps_list=[0, 8 / 255],
                                n_attack=10, pgd_steps=3, pgd_step_factor=2.5)
    grid = pd.read_csv(out / "probe.csv")
    robust = pd.read_csv(out / "robustness.csv")
    assert len(grid) == 4 and robust["eps_255"].tolist() == [0, 8]
    assert summary["best_layer"] in grid["layer"].tolist()
    assert summary["robust_accuracy"]["0/255"] == robust["robust_accuracy"][0]
    for png in ("probe.png", "robustness.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
