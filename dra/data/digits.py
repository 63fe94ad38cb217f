"""The offline mini dataset: scikit-learn's handwritten digits as image stores.

load_digits ships 1797 8x8 images with integer intensities 0..16 and labels 0..9 inside the
scikit-learn wheel, so the mini workflow needs no network. Intensities are scaled to uint8 as
round(v * 255 / 16) and copied to three channels, giving the same store format as CIFAR.
The split is fixed: the first 1297 images train, the last 500 test.
"""

from __future__ import annotations

import os

import numpy as np

from dra.data.store import ImageStoreWriter

NUM_IMAGES = 1797
TRAIN_SIZE = 1297
TEST_SIZE = NUM_IMAGES - TRAIN_SIZE
NUM_CLASSES = 10
MAX_INTENSITY = 16


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, 8, 8, 3) uint8 and their int64 labels, in scikit-learn's order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    intensity = np.asarray(digits.images, dtype=np.float64)
    # floor(x + 0.5) rounds the one half-way value (8 -> 127.5) up, the usual image convention.
    scaled = np.floor(intensity * 255.0 / MAX_INTENSITY + 0.5).astype(np.uint8)
    images = np.repeat(scaled[..., None], 3, axis=-1)
    return images, np.asarray(digits.target, dtype=np.int64)


def prepare_digits(train_dest: str | os.PathLike, test_dest: str | os.PathLike) -> None:
    """Write the fixed train (first 1297) and test (last 500) digit stores."""
    images, labels = digits_uint8()
    if images.shape != (NUM_IMAGES, 8, 8, 3):
        raise ValueError(
            f"scikit-learn's load_digits returned {images.shape}, expected ({NUM_IMAGES}, 8, 8)"
        )
    for split, dest, rows in (
        ("train", train_dest, slice(0, TRAIN_SIZE)),
        ("test", test_dest, slice(TRAIN_SIZE, NUM_IMAGES)),
    ):
        meta = {"source": "sklearn.datasets.load_digits", "dataset": "digits", "split": split}
        split_images, split_labels = images[rows], labels[rows]
        with ImageStoreWriter(dest, len(split_labels), 8, 8, NUM_CLASSES, meta=meta) as writer:
            writer.write(0, split_images, split_labels)
