"""A tiny trained-cell layout shared by the evaluation tests: model.pt, recipe.yaml and a test store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def tiny_wrn_with_test_store(folder: Path, n: int) -> torch.nn.Module:
    """A random WRN-10-1 (model.pt + recipe.yaml) and n random 8x8 test images labelled with its own
    predictions, so that its clean accuracy is exactly 100% and any flip is the attack's doing."""
    from dra.data.store import ImageStoreWriter
    from dra.io import write_yaml
    from dra.models import create_classifier

    recipe = {"arch": {"family": "wrn", "depth": 10, "width": 1, "activation": "silu"},
              "data": {"num_classes": 10, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    torch.manual_seed(0)
    model = create_classifier(recipe["arch"], 10, recipe["data"]["mean"], recipe["data"]["std"]).eval()
    torch.save(model.state_dict(), folder / "model.pt")
    write_yaml(folder / "recipe.yaml", recipe)
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    with torch.no_grad():
        predicted = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    with ImageStoreWriter(folder / "test", n=n, height=8, width=8, num_classes=10) as writer:
        writer.write(0, images, predicted.astype(np.int64))
    return model
