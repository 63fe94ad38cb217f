"""Validate a user's ILSVRC-2012 folder and index it.

ImageNet cannot be downloaded by the workflow (it needs an image-net.org account), so the
user points ``imagenet_dir`` at a folder laid out as::

    <root>/train/<wnid>/*.JPEG   1,281,167 images in 1000 class folders
    <root>/val/<wnid>/*.JPEG     50,000 images, sorted into the same 1000 class folders

The index written here lists relative paths and labels (classes sorted by wnid, the order of
torchvision's ImageFolder and of RobustBench's class map), plus the 5000 validation images
RobustBench evaluates ImageNet models on (robustbench/data.py), selected by its fixed id list.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

from dra.io import atomic_dir, write_json

TRAIN_IMAGES = 1_281_167
VAL_IMAGES = 50_000
NUM_CLASSES = 1000

# RobustBench/robustbench robustbench/helper_files/imagenet_test_image_ids.txt, last changed in
# commit 5be8f6a0e71f2eba92ee61d7126c081ff10ea45c (read at master 78fcc9e48a07, 2025-03-31):
# 5000 "<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG" lines from 997 classes, in RobustBench's order.
ROBUSTBENCH_EVAL_IDS = (
    Path(__file__).resolve().parents[2]
    / "config"
    / "data"
    / "robustbench_imagenet_test_image_ids.txt"
)
ROBUSTBENCH_EVAL_IDS_SHA256 = "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574"
ROBUSTBENCH_EVAL_SIZE = 5000

IMAGE_SUFFIXES = {".jpeg", ".jpg"}

HOW_TO_GET = (
    "ImageNet (ILSVRC-2012) must be downloaded by hand from https://image-net.org (account needed): "
    "ILSVRC2012_img_train.tar (one tar per class inside; extract each into train/<wnid>/) and "
    "ILSVRC2012_img_val.tar (50,000 images, extract into val/ and then move each image into "
    "val/<wnid>/ using the validation labels of the ILSVRC2012 devkit). Then set imagenet_dir "
    "in the config to the folder that holds train/ and val/."
)


class ImageNetFolderError(ValueError):
    """The ImageNet folder is missing or incomplete; the message says what and how to fix it."""


def _list_split(
    root: Path, split: str, num_classes: int, expected_images: int
) -> dict[str, list[str]]:
    """Return {wnid: sorted image file names} for one split after checking it is complete."""
    folder = root / split
    if not folder.is_dir():
        raise ImageNetFolderError(f"{folder} is missing. {HOW_TO_GET}")
    classes: dict[str, list[str]] = {}
    loose_images = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                with os.scandir(entry.path) as files:
                    classes[entry.name] = sorted(
                        f.name
                        for f in files
                        if f.is_file() and Path(f.name).suffix.lower() in IMAGE_SUFFIXES
                    )
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                loose_images += 1
    if loose_images and not classes:
        raise ImageNetFolderError(
            f"{folder} holds {loose_images} images directly instead of class folders: the {split} split "
            f"is not sorted into <wnid>/ folders. {HOW_TO_GET}"
        )
    if len(classes) != num_classes:
        raise ImageNetFolderError(
            f"{folder} has {len(classes)} class folders, expected {num_classes} (one per wnid). {HOW_TO_GET}"
        )
    empty = sorted(wnid for wnid, names in classes.items() if not names)
    if empty:
        raise ImageNetFolderError(
            f"{folder}: {len(empty)} class folders hold no .JPEG images (e.g. {empty[:3]}); "
            f"the extraction is incomplete. {HOW_TO_GET}"
        )
    found = sum(len(names) for names in classes.values())
    if found != expected_images:
        raise ImageNetFolderError(
            f"{folder} holds {found} images, expected {expected_images}: the {split} split is partial "
            f"or has extra files. {HOW_TO_GET}"
        )
    return classes


def _read_eval_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise ImageNetFolderError(
            f"evaluation id list {path} is missing; restore it from the repository."
        )
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise ImageNetFolderError(f"{path} lists some images twice.")
    return ids


def check_robustbench_eval_ids(path: str | os.PathLike = ROBUSTBENCH_EVAL_IDS) -> list[str]:
    """Read the shipped RobustBench id list after checking it is the unmodified file."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if digest != ROBUSTBENCH_EVAL_IDS_SHA256:
        raise ImageNetFolderError(
            f"{path} is missing or modified (sha256 {digest}, expected {ROBUSTBENCH_EVAL_IDS_SHA256}); "
            "restore it from the repository."
        )
    ids = _read_eval_ids(path)
    if len(ids) != ROBUSTBENCH_EVAL_SIZE:
        raise ImageNetFolderError(
            f"{path} lists {len(ids)} images, expected {ROBUSTBENCH_EVAL_SIZE}."
        )
    return ids


def _write_csv(path: Path, rows: list[tuple[str, int]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)


def index_imagenet(
    root: str | os.PathLike,
    dest: str | os.PathLike,
    expected_train: int = TRAIN_IMAGES,
    expected_val: int = VAL_IMAGES,
    num_classes: int = NUM_CLASSES,
    eval_ids: str | os.PathLike | None = None,
) -> dict:
    """Validate ``root`` and write the index folder ``dest``; return its summary.

    ``dest`` holds ``classes.txt`` (wnid per line; line number = label), ``train.csv``,
    ``val.csv`` and ``eval.csv`` (path relative to ``root``, label) and ``meta.json``.
    ``eval_ids`` defaults to RobustBench's 5000-image list (checked by sha256); a custom list
    is used as given.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageNetFolderError(f"ImageNet folder {root} does not exist. {HOW_TO_GET}")
    train = _list_split(root, "train", num_classes, expected_train)
    val = _list_split(root, "val", num_classes, expected_val)
    if set(train) != set(val):
        only_train = sorted(set(train) - set(val))[:3]
        only_val = sorted(set(val) - set(train))[:3]
        raise ImageNetFolderError(
            f"{root}/train and {root}/val have different class folders (only in train: {only_train}, "
            f"only in val: {only_val}). {HOW_TO_GET}"
        )
    classes = sorted(train)
    label_of = {wnid: label for label, wnid in enumerate(classes)}

    if eval_ids is None:
        ids, ids_source = check_robustbench_eval_ids(), ROBUSTBENCH_EVAL_IDS.name
    else:
        ids, ids_source = _read_eval_ids(Path(eval_ids)), Path(eval_ids).name
    val_files = {f"{wnid}/{name}" for wnid, names in val.items() for name in names}
    missing = [image_id for image_id in ids if image_id not in val_files]
    if missing:
        raise ImageNetFolderError(
            f"{len(missing)} images of the evaluation list {ids_source} are not in {root}/val "
            f"(e.g. {missing[:3]}): the val split is not sorted by the ILSVRC2012 devkit labels. {HOW_TO_GET}"
        )

    summary = {
        "root": str(root.resolve()),
        "num_classes": num_classes,
        "train": sum(len(names) for names in train.values()),
        "val": sum(len(names) for names in val.values()),
        "eval": len(ids),
        "eval_ids": ids_source,
    }
    with atomic_dir(dest) as folder:
        (folder / "classes.txt").write_text("".join(f"{wnid}\n" for wnid in classes))
        for split, listing in (("train", train), ("val", val)):
            rows = [
                (f"{split}/{wnid}/{name}", label_of[wnid])
                for wnid in classes
                for name in listing[wnid]
            ]
            _write_csv(folder / f"{split}.csv", rows)
        _write_csv(
            folder / "eval.csv",
            [(f"val/{image_id}", label_of[image_id.split("/")[0]]) for image_id in ids],
        )
        write_json(folder / "meta.json", summary)
    return summary

