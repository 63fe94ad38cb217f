"""Images per second of ImageNet training batches: ours (dra.training.imagenet_batches) against
torchvision's ImageFolder DataLoader, the loader of most adversarial-training code for ImageNet.

Writes --images JPEGs of ImageNet's typical size (500x375, quality 90) into an ILSVRC-style folder
and a 256x256 synthetic store, then times the same number of batches of --batch-size three ways
in one process, each after one warm-up batch:

  torchvision : ImageFolder + RandomResizedCrop(224) + flip + ToTensor (float32 leaves the
                workers), shuffled DataLoader, real images only.
  ours real   : ImageNetBatches on the index, real only: crops seeded per image, uint8 leaves
                the workers; the training loop converts to float on the accelerator, so that
                conversion is not timed here (--convert-on-host times it on the CPU).
  ours mixed  : the same with DM-AT's mix, 70% of each batch from the synthetic store.

    PYTHONPATH=. python benchmarks/imagenet_loader.py --images 512 --batch-size 64 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_folder(root: Path, n: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / "train" / f"n{label:08d}").mkdir(parents=True)
        (root / "val" / f"n{label:08d}").mkdir(parents=True)
    for k in range(n):
        # smooth random content: JPEG sizes like photographs', not like noise
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        image.save(root / "train" / f"n{k % classes:08d}" / f"{k}.JPEG", quality=90)
    for label in range(classes):
        image.save(root / "val" / f"n{label:08d}" / "v.JPEG", quality=90)


def time_batches(batches, count: int) -> float:
    iterator = iter(batches)
    next(iterator)  # warm-up: workers start, first files are read
    started = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--convert-on-host", action="store_true", help="time ours' uint8 -> float32 on the CPU too")
    args = parser.parse_args(argv)
    from torchvision import datasets, transforms

    from dra.data.imagenet import index_imagenet
    from dra.data.sampler import DMATBatchSampler
    from dra.data.store import ImageStoreWriter
    from dra.training.imagenet_batches import ImageNetBatches

    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="imagenet_loader_"))
    classes = 8
    try:
        write_folder(work / "folder", args.images, classes)
        (work / "ids.txt").write_text("".join(f"n{label:08d}/v.JPEG\n" for label in range(classes)))
        index_imagenet(work / "folder", work / "index", expected_train=args.images, expected_val=classes,
                       num_classes=classes, eval_ids=work / "ids.txt")
        rng = np.random.default_rng(1)
        with ImageStoreWriter(work / "synthetic", args.images, 256, 256, classes, meta={"source": "benchmark"}) as w:
            w.write(0, rng.integers(0, 256, (args.images, 256, 256, 3), dtype=np.uint8),
                    np.arange(args.images) % classes)
        count = args.images // args.batch_size - 1

        baseline = torch.utils.data.DataLoader(
            datasets.ImageFolder(work / "folder" / "train", transforms.Compose([
                transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()])),
            batch_size=args.batch_size, shuffle=True, num_workers=args.workers, prefetch_factor=4)
        seconds = {"torchvision": time_batches(baseline, count)}

        for name, synthetic, fraction in (("ours real", None, 0.0), ("ours mixed", work / "synthetic", 0.7)):
            sampler = DMATBatchSampler(args.images, args.images if synthetic else 0, args.batch_size, fraction,
                                       args.images, seed=0)
            batches = ImageNetBatches(str(work / "index"), str(synthetic) if synthetic else None, 224, 0, args.workers)
            stream = (images.float().div_(255.0) if args.convert_on_host else images
                      for _, _, images, _ in batches.epoch(0, 0, sampler.epoch(0)))
            seconds[name] = time_batches(stream, count)
        images = count * args.batch_size
        print(f"{images} images in batches of {args.batch_size}, {args.workers} workers, 224x224 crops")
        for name, value in seconds.items():
            print(f"{name:<12} {images / value:8.1f} images/s   {seconds['torchvision'] / value:5.2f}x torchvision")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
