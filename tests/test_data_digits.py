"""The mini dataset: scikit-learn digits as uint8 RGB stores with a fixed 1297/500 split."""

import numpy as np
from sklearn.datasets import load_digits

from dra.data.digits import prepare_digits
from dra.data.store import open_image_store


def test_digits_stores(tmp_path):
    prepare_digits(tmp_path / "train", tmp_path / "test")
    train, test = open_image_store(tmp_path / "train"), open_image_store(tmp_path / "test")
    assert train.images.shape == (1297, 8, 8, 3) and test.images.shape == (500, 8, 8, 3)
    assert train.num_classes == test.num_classes == 10

    reference = load_digits()
    images = np.concatenate([train.images, test.images])
    labels = np.concatenate([train.labels, test.labels])
    np.testing.assert_array_equal(labels, reference.target)
    # float64 reference: intensity v in 0..16 maps to round(v * 255 / 16), the same on all channels
    expected = np.floor(reference.images.astype(np.float64) * 255 / 16 + 0.5)
    for channel in range(3):
        np.testing.assert_array_equal(images[..., channel], expected)
    assert images.min() == 0 and images.max() == 255
    assert set(np.unique(images).tolist()) <= {int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)}
    assert int(np.floor(8 * 255 / 16 + 0.5)) == 128  # the one half-way value rounds up
    # every class occurs in both splits
    assert (np.bincount(train.labels, minlength=10) > 0).all() and (
        np.bincount(test.labels, minlength=10) > 0
    ).all()
