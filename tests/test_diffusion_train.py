"""The mini diffusion trainer: EDM loss, falling loss, saved like an official checkpoint."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dra.data.store import ImageStoreWriter
from dra.diffusion.checkpoint import load_edm
from dra.diffusion.edm import EDMPrecond
from dra.diffusion.train import MINI_EDM_KWARGS, edm_loss, train_diffusion_model, train_edm

torch.set_num_threads(1)
SMALL = dict(MINI_EDM_KWARGS, model_channels=8)


def digits_uint8():
    """scikit-learn digits (values 0..16) as uint8 RGB 8x8 images."""
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    return np.repeat(images[..., None], 3, axis=-1), digits.target.astype(np.int64)


def test_edm_loss_matches_formula():
    net = EDMPrecond(**SMALL).eval()
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    loss = edm_loss(net, images, None, generator)
    # Replay the same draws: ln sigma ~ N(-1.2, 1.2^2), weight (s^2 + 0.25)/(0.5 s)^2 (edm training/loss.py).
    replay = torch.Generator().manual_seed(0)
    sigma = (torch.randn(4, 1, 1, 1, generator=replay) * 1.2 - 1.2).exp()
    noise = torch.randn(images.shape, generator=replay) * sigma
    with torch.no_grad():
        residual = net(images + noise, sigma) - images
    weight = (sigma.double() ** 2 + 0.25) / (sigma.double() * 0.5) ** 2
    expected = (weight * residual.double() ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
def test_mini_diffusion_loss_falls():
    images, labels = digits_uint8()
    ema, log = train_edm(images[:512], labels[:512], SMALL, steps=100, batch_size=16,
                         lr=2e-3, seed=0)
    losses = [row["loss"] for row in log]
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert all(math.isfinite(x) for x in losses)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="img_resolution=8"):
        train_edm(np.zeros((4, 16, 16, 3), np.uint8), np.zeros(4, np.int64), SMALL, steps=1)


@pytest.mark.slow
def test_train_diffusion_model_writes_loadable_checkpoint(tmp_path):
    images, labels = digits_uint8()
    with ImageStoreWriter(tmp_path / "train", 300, 8, 8, 10, meta={"source": "digits"}) as writer:
        writer.write(0, images[:300], labels[:300])
    out = tmp_path / "model"
    quality = train_diffusion_model(tmp_path / "train", out / "model.safetensors", out / "model.json",
                                    out / "loss.csv", dict(model_channels=8), steps=5, batch_size=16,
                                    out_quality=out / "quality.json", eval_per_class=2, eval_steps=3)
    net = load_edm(out / "model.safetensors")
    spec = json.loads((out / "model.json").read_text())
    assert spec["init_kwargs"]["model_channels"] == 8 and net.label_dim == 10
    saved = json.loads((out / "quality.json").read_text())
    assert saved["n"] == 20 and 0 <= saved["label_agreement"] <= 1 and saved == json.loads(json.dumps(quality))
    assert saved["parameters"] == sum(p.numel() for p in net.parameters())
    assert saved["ema_decay"] == pytest.approx(0.5 ** (16 / 17_700))
    assert (tmp_path / "model" / "loss.csv").read_text().count("\n") == 6
