"""Reading ImageNet through the index of dra.data.imagenet, with the standard transforms.

The index folder (``index_imagenet``) lists ``<split>.csv`` rows (path relative to the
ImageNet root, label) and the root in ``meta.json``; row i of a split is sample i everywhere
(feature stores are aligned to it). Images are decoded with PIL in DataLoader workers and
leave the workers as uint8 CHW tensors (4x less inter-process traffic than float); the
model divides by 255 (classifiers take images in [0, 1], normalization inside).

Transforms:
- ``train``: RandomResizedCrop(224) (scale (0.08, 1), ratio (3/4, 4/3), bilinear) + horizontal flip,
  torchvision's ImageNet training recipe.
- ``eval``: Resize(256) + CenterCrop(224), RobustBench's ``Res256Crop224`` (robustbench/data.py).
- ``adm256``: ADM's center_crop_arr to 256x256, the input LightningDiT/VA-VAE saw in training
  (tokenizer/vavae.py img_transform, hustvl/LightningDiT); used for the diffusion representations.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from dra.data.imagenet import ImageNetFolderError

SPLITS = ("train", "val", "eval")


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's center crop: halve with a box filter while the short side is >= 2*size, resize the short
    side to ``size`` (bicubic, rounded), then cut the central size x size square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def imagenet_transform(kind: str, size: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> uint8 (3, size, size) tensor for ``kind`` in train | eval | adm256."""
    if kind == "train":
        crop = transforms.RandomResizedCrop(size or 224, interpolation=transforms.InterpolationMode.BILINEAR)
        return transforms.Compose([crop, transforms.RandomHorizontalFlip(), _to_uint8_chw])
    if kind == "eval":
        size = size or 224
        # RobustBench Res256Crop224: resize the short side to 256 (= size / 0.875), crop the centre.
        return transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size), _to_uint8_chw])
    if kind == "adm256":
        return transforms.Compose([lambda image: adm_center_crop(image, size or 256), _to_uint8_chw])
    raise ValueError(f"unknown ImageNet transform {kind!r}; use train, eval or adm256")


def read_index(index_dir: str | os.PathLike, split: str) -> tuple[Path, list[str], np.ndarray]:
    """(ImageNet root, relative paths, int64 labels) of one split of an index folder."""
    index_dir = Path(index_dir)
    if split not in SPLITS:
        raise ValueError(f"ImageNet split must be one of {SPLITS}, got {split!r}")
    meta_path, csv_path = index_dir / "meta.json", index_dir / f"{split}.csv"
    for path in (meta_path, csv_path):
        if not path.is_file():
            raise ImageNetFolderError(f"{path} is missing: {index_dir} is not a finished ImageNet index; "
                                      "run the prepare_imagenet step (scripts/prepare_imagenet.py)")
    root = Path(json.loads(meta_path.read_text())["root"])
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != ["path", "label"]:
        raise ImageNetFolderError(f"{csv_path} must start with the header 'path,label'; rerun prepare_imagenet")
    paths = [row[0] for row in rows[1:]]
    labels = np.array([int(row[1]) for row in rows[1:]], dtype=np.int64)
    return root, paths, labels


class ImageNetIndexDataset(Dataset):
    """``dataset[i] -> (uint8 image (3, H, W), label, i)`` for row i of ``<index_dir>/<split>.csv``."""

    def __init__(self, index_dir: str | os.PathLike, split: str, transform: Callable[[Image.Image], torch.Tensor]):
        self.root, self.paths, self.labels = read_index(index_dir, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                # convert: ImageNet holds some CMYK and greyscale JPEGs (and one PNG named .JPEG).
                rgb = image.convert("RGB")
        except (OSError, ValueError) as error:
            raise ImageNetFolderError(f"{path} (row {index}) cannot be decoded ({error}); restore that file "
                                      "from the ILSVRC2012 archive") from error
        return self.transform(rgb), int(self.labels[index]), index


class ImageStoreDataset(Dataset):
    """The same protocol over an image store (uint8 HWC memory map): ``(image CHW, label, i)``."""

    def __init__(self, store_path: str | os.PathLike):
        from dra.data.store import open_image_store

        self.store = open_image_store(store_path)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = torch.from_numpy(np.array(self.store.images[index], dtype=np.uint8)).permute(2, 0, 1)
        return image, int(self.store.labels[index]), index


def imagenet_loader(dataset: Dataset, batch_size: int, num_workers: int = 8, shuffle: bool = False,
                    seed: int = 0, drop_last: bool = False) -> DataLoader:
    """Batches ``(uint8 images (B, 3, H, W), labels (B,), indices (B,))``.

    ``seed`` fixes the shuffling and the workers' random crops/flips (their seeds derive from it).
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


def write_eval_store(index_dir: str | os.PathLike, out: str | os.PathLike, size: int = 224, num_classes: int = 1000,
                     batch_size: int = 100, num_workers: int = 8) -> Path:
    """The evaluation images (``eval.csv``: RobustBench's 5000) after Res256Crop224, as an image store.

    Evaluation then reads ImageNet like every other test set: AutoAttack, the classification
    dimension and the figures take ``<data_dir>/imagenet/test`` (750 MB at 224x224).
    """
    from dra.data.store import ImageStoreWriter

    dataset = ImageNetIndexDataset(index_dir, "eval", imagenet_transform("eval", size))
    meta = {"source": f"{index_dir}:eval", "transform": f"Resize({round(size / 0.875)}) + CenterCrop({size})"}
    with ImageStoreWriter(out, len(dataset), size, size, num_classes, meta=meta) as writer:
        for images, labels, indices in imagenet_loader(dataset, batch_size, num_workers=num_workers):
            writer.write(int(indices[0]), images.permute(0, 2, 3, 1).numpy(), labels.numpy())
    return Path(out)
