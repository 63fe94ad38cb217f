"""The canary's stand-in for ILSVRC-2012 (config/canary.yaml): an ImageNet-layout folder of random
JPEGs, validated and indexed by dra.data.imagenet.index_imagenet like the user's folder. A module of
its own: it writes JPEGs with pillow, which the data env of prepare_imagenet does not hold."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from dra.io import atomic_dir


def write_random_imagenet_folder(
    root: str | os.PathLike, num_classes: int, train_images: int, val_images: int, seed: int
) -> None:
    """An ImageNet-layout folder of random JPEGs (the canary's stand-in for ILSVRC-2012):
    train/<wnid>/*.JPEG and val/<wnid>/*.JPEG at ImageNet-like sizes (240-400 x 240-500 pixels),
    images going round the classes, and eval_ids.txt listing every validation image as the
    evaluation set. Pixels are random blocks of 8x8, so the files stay small (noise does not
    compress) while every decode, crop and resize is the real one."""
    if min(train_images, val_images) < num_classes:
        raise ValueError(f"{train_images} training and {val_images} validation images cannot fill {num_classes} "
                         "class folders; give at least one image per class")
    rng = np.random.default_rng(seed)
    wnids = [f"n{index:08d}" for index in range(num_classes)]
    with atomic_dir(root) as folder:
        eval_ids = []
        for split, count in (("train", train_images), ("val", val_images)):
            for index in range(count):
                wnid = wnids[index % num_classes]
                (folder / split / wnid).mkdir(parents=True, exist_ok=True)
                height, width = int(rng.integers(240, 400)), int(rng.integers(240, 500))
                blocks = rng.integers(0, 256, (-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
                pixels = blocks.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]
                name = f"{wnid}/{split}_{index:08d}.JPEG"
                Image.fromarray(pixels).save(folder / split / name, quality=90)
                if split == "val":
                    eval_ids.append(name)
        (folder / "eval_ids.txt").write_text("".join(f"{name}\n" for name in sorted(eval_ids)))
