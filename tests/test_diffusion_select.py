"""DM-AT's per-class selection of generated images (DM-AT edm/select_1M.py)."""

import numpy as np
import pytest
import torch

from dra.data.store import ImageStoreWriter, open_image_store
from dra.diffusion.select import conditioning_class_probability, select_synthetic, top_fraction_per_class


def test_top_fraction_per_class_known_answer():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.3, 0.3])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert top_fraction_per_class(scores, labels, 0.5).tolist() == [0, 3, 5, 6]  # tie 0.3/0.3 -> lower index
    assert top_fraction_per_class(scores, labels, 1.0).tolist() == list(range(8))
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_per_class(scores, labels, 0)


class BrightnessClassifier(torch.nn.Module):
    """Logits (0, 10 * (mean brightness - 0.5)): class 1 is 'bright'."""

    def forward(self, x):
        bright = 10 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([torch.zeros_like(bright), bright], dim=1)


def test_select_synthetic_keeps_the_most_typical_images(tmp_path):
    levels = np.array([10, 240, 120, 30, 250, 200, 100, 60], dtype=np.uint8)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    images = np.broadcast_to(levels[:, None, None, None], (8, 4, 4, 3)).copy()
    with ImageStoreWriter(tmp_path / "all", 8, 4, 4, 2, meta={"source": "test"}) as writer:
        writer.write(0, images, labels)
    probs = conditioning_class_probability(BrightnessClassifier(), images, labels, batch_size=3)
    expected_p1 = 1 / (1 + np.exp(-10 * (levels / 255 - 0.5)))
    np.testing.assert_allclose(probs, np.where(labels == 1, expected_p1, 1 - expected_p1), rtol=1e-5)
    select_synthetic(BrightnessClassifier(), tmp_path / "all", tmp_path / "top", fraction=0.5, batch_size=3)
    kept = open_image_store(tmp_path / "top")
    # class 0 keeps its two darkest images, class 1 its two brightest.
    assert kept.images[:, 0, 0, 0].tolist() == [10, 30, 250, 200] and kept.labels.tolist() == [0, 0, 1, 1]
    assert kept.meta["selection_fraction"] == 0.5
