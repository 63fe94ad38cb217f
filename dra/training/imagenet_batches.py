"""ImageNet training batches: real JPEGs (through the index) and synthetic 256x256 images, mixed as
DM-AT mixes them, decoded and augmented in DataLoader workers.

The image stores of CIFAR are augmented on the device from the loop's generator. ImageNet images
must be decoded first, which only parallel workers make fast enough, and workers run ahead of the
loop. So nothing here reads the loop's generator: the order inside a batch and every image's
crop come from numpy/torch generators seeded by (seed, epoch, step, position). A run resumed at
any step sees the same batches whatever the number of workers.

Augmentation (torchvision's ImageNet recipe): RandomResizedCrop to ``image_size`` (scale (0.08, 1),
ratio (3/4, 4/3), bilinear, antialiased) and a horizontal flip, for real and synthetic images alike.
Batches leave the workers as uint8 (B, 3, S, S) tensors.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dra.data.imagenet_loader import ImageNetIndexDataset, imagenet_transform


def batch_plan(seed: int, epoch: int, step: int, real_idx: np.ndarray, synthetic_idx: np.ndarray):
    """(store_index, is_synthetic, augmentation seeds) of one batch, shuffled, from its own generator."""
    rng = np.random.default_rng([seed, epoch, step])
    store_index = np.concatenate([np.asarray(real_idx, np.int64), np.asarray(synthetic_idx, np.int64)])
    is_synthetic = np.concatenate([np.zeros(len(real_idx), bool), np.ones(len(synthetic_idx), bool)])
    order = rng.permutation(len(store_index))
    return store_index[order], is_synthetic[order], rng.integers(0, 2**62, size=len(order))


class MixedImageNet(Dataset):
    """``dataset[(is_synthetic, row, augmentation_seed)] -> (uint8 (3, S, S), label)``."""

    def __init__(self, index_dir: str, synthetic_store: str | None, image_size: int):
        self.real = ImageNetIndexDataset(index_dir, "train", transform=lambda image: image)
        self.synthetic = None
        if synthetic_store is not None:
            from dra.data.store import open_image_store

            self.synthetic = open_image_store(synthetic_store)
        self.augment = imagenet_transform("train", image_size)  # PIL image -> uint8 (3, S, S)

    def __len__(self) -> int:  # the keys are tuples; the length is the real set's, for information
        return len(self.real)

    def __getitem__(self, key: tuple[bool, int, int]) -> tuple[torch.Tensor, int]:
        is_synthetic, row, seed = key
        if is_synthetic:
            image, label = Image.fromarray(np.asarray(self.synthetic.images[row])), int(self.synthetic.labels[row])
        else:
            image, label, _ = self.real[row]
        # the crop and flip draw from torch's global generator: seed it for this image only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            pixels = self.augment(image)
        return pixels, label


def _collate(items):
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)


class ImageNetBatches:
    def __init__(self, index_dir: str, synthetic_store: str | None, image_size: int, seed: int, num_workers: int):
        self.dataset = MixedImageNet(index_dir, synthetic_store, image_size)
        self.seed, self.num_workers = seed, num_workers

    def epoch(self, epoch: int, first_step: int, batches: Sequence[tuple[np.ndarray, np.ndarray]],
              shard: Callable[[int], slice] | None = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]]:
        """(store_index, is_synthetic, uint8 images, labels) of ``batches``, the epoch's batches from
        ``first_step`` on. ``shard(batch_size)`` is this rank's slice of a batch (data parallel): only
        those images are decoded and returned, with their labels; the indices stay whole."""
        plans = [batch_plan(self.seed, epoch, first_step + k, real, synthetic)
                 for k, (real, synthetic) in enumerate(batches)]
        shard = shard or (lambda size: slice(0, size))
        keys = [[(bool(s), int(i), int(a)) for i, s, a in zip(*plan)][shard(len(plan[0]))] for plan in plans]
        loader = DataLoader(self.dataset, batch_sampler=keys, num_workers=self.num_workers, collate_fn=_collate,
                            pin_memory=torch.cuda.is_available(), prefetch_factor=4 if self.num_workers else None)
        for (store_index, is_synthetic, _), (images, labels) in zip(plans, loader):
            yield store_index, is_synthetic, images, labels.numpy()
