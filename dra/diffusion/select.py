"""DM-AT's 1M selection: keep, per class, the generated images a classifier finds most typical.

DM-AT scored every generated CIFAR image by a standard classifier's softmax probability of
its conditioning class and kept the top 20% per class (10% for CIFAR-100) (DM-AT edm/select_1M.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dra.diffusion.features import images_to_tensor


def top_fraction_per_class(scores: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted indices of the ``round(fraction * n_c)`` highest-scoring images of every class c.

    Ties are broken by the lower index, so the selection is deterministic.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"selection fraction must be in (0, 1], got {fraction}")
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.lexsort((members, -scores[members]))  # by score descending, then index
        keep.append(members[order[: int(round(fraction * len(members)))]])
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


@torch.no_grad()
def conditioning_class_probability(classifier: nn.Module, images_uint8_nhwc: np.ndarray, labels: np.ndarray,
                                   batch_size: int = 512) -> np.ndarray:
    """softmax(classifier(image))[label] for every image; the classifier takes [0, 1] images."""
    classifier.eval()
    out = np.empty(len(labels), dtype=np.float64)
    for lo in tqdm(range(0, len(labels), batch_size), desc="scoring", file=sys.stderr):
        hi = min(len(labels), lo + batch_size)
        probs = classifier(images_to_tensor(images_uint8_nhwc[lo:hi])).softmax(dim=1)
        out[lo:hi] = probs[torch.arange(hi - lo), torch.as_tensor(np.array(labels[lo:hi], dtype=np.int64))].double().numpy()
    return out


def select_synthetic(classifier: nn.Module, image_store: str | Path, out_store: str | Path, fraction: float,
                     batch_size: int = 512) -> Path:
    """Write the per-class top ``fraction`` of ``image_store`` (by the classifier) as a new store."""
    from dra.data.store import ImageStoreWriter, open_image_store

    store = open_image_store(image_store)
    scores = conditioning_class_probability(classifier, store.images, store.labels, batch_size)
    keep = top_fraction_per_class(scores, store.labels, fraction)
    meta = dict(store.meta, source=f"selection of {image_store}", selection_fraction=fraction)
    for key in ("n", "height", "width", "channels", "num_classes"):
        meta.pop(key, None)
    height, width = store.images.shape[1:3]
    with ImageStoreWriter(out_store, len(keep), height, width, store.num_classes, meta=meta) as writer:
        for lo in range(0, len(keep), batch_size):
            rows = keep[lo:lo + batch_size]
            writer.write(lo, np.asarray(store.images[rows]), np.asarray(store.labels[rows]))
    return Path(out_store)
