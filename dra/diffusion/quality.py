"""Quality of a generated synthetic set, measured rather than assumed.

A pixel classifier fitted on the real training split labels every generated image; the share
that gets its conditioning label back is the set's label agreement. The same judge's accuracy on
the real test split is reported beside it as the ceiling of what the judge can tell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dra.data.store import open_image_store
from dra.diffusion.train import fit_pixel_classifier
from dra.io import write_json


def _flat(images: np.ndarray) -> np.ndarray:
    return np.asarray(images).reshape(len(images), -1).astype(np.float32) / 255


def synthetic_label_agreement(generated: str | Path, train: str | Path, test: str | Path, out: str | Path,
                              seed: int = 0) -> dict:
    generated_store, train_store, test_store = (open_image_store(p) for p in (generated, train, test))
    judge = fit_pixel_classifier(np.asarray(train_store.images), np.asarray(train_store.labels), seed)
    labels = np.asarray(generated_store.labels)
    predictions = judge.predict(_flat(generated_store.images))
    num_classes = int(train_store.meta["num_classes"])
    report = {
        "label_agreement": float((predictions == labels).mean()),
        "per_class": [float((predictions[labels == c] == c).mean()) for c in range(num_classes)],
        "judge_test_accuracy": float((judge.predict(_flat(test_store.images)) == np.asarray(test_store.labels)).mean()),
        "n_generated": int(len(labels)),
        "generated_store": str(generated),
    }
    write_json(out, report)
    return report
