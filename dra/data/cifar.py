"""CIFAR-10/100 from the official python archives into image stores.

The archives (cifar-10-python.tar.gz, cifar-100-python.tar.gz; sha256 in config.yaml; docs/sources.md) hold
pickled dicts with ``b'data'`` (N, 3072) uint8 as three 1024-byte colour planes (CHW) and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). Members are read straight from
the tar stream; nothing is extracted to disk. The stores hold (N, 32, 32, 3) HWC uint8, the
layout torchvision and DM-AT's npz use.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dra.data.store import ImageStoreWriter


class CifarArchiveError(ValueError):
    """The archive is not the official CIFAR python archive; the message names it."""


@dataclass(frozen=True)
class CifarLayout:
    num_classes: int
    folder: str  # top-level folder inside the archive
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: bytes
    names_key: bytes


LAYOUTS = {
    "cifar10": CifarLayout(
        num_classes=10,
        folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_member="test_batch",
        meta_member="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarLayout(
        num_classes=100,
        folder="cifar-100-python",
        train_members=("train",),
        test_member="test",
        meta_member="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

# Official split sizes; both datasets are exactly class-balanced.
TRAIN_SIZE = 50_000
TEST_SIZE = 10_000


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only, so a tampered archive cannot run code."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 writes bytes as _codecs.encode(str, 'latin1') under protocol 2 (re-pickled copies).
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_members(archive: Path, names: list[str]) -> dict[str, dict]:
    """Unpickle the named members in one pass over the gzip stream (no extraction to disk)."""
    wanted, found = set(names), {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue
                raw = tar.extractfile(member).read()
                try:
                    content = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
                except (pickle.UnpicklingError, EOFError, ValueError) as error:
                    raise CifarArchiveError(
                        f"{archive}: member {member.name} is not a CIFAR pickle ({error})."
                    ) from error
                if not isinstance(content, dict):
                    raise CifarArchiveError(
                        f"{archive}: member {member.name} holds {type(content).__name__}, expected a dict."
                    )
                found[member.name] = content
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CifarArchiveError(
            f"{archive} is not a readable tar.gz ({error}); delete it and download again."
        ) from error
    missing = [name for name in names if name not in found]
    if missing:
        raise CifarArchiveError(
            f"{archive} lacks members {missing}; is this the official python-version archive?"
        )
    return found


def _images_and_labels(
    batch: dict, where: str, layout: CifarLayout
) -> tuple[np.ndarray, np.ndarray]:
    for key in (b"data", layout.label_key):
        if key not in batch:
            raise CifarArchiveError(f"{where} lacks key {key!r}; found {sorted(batch)}.")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CifarArchiveError(
            f"{where}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}."
        )
    if labels.shape != (data.shape[0],):
        raise CifarArchiveError(f"{where}: {labels.shape[0]} labels for {data.shape[0]} images.")
    # Rows are three 32x32 planes (R, G, B); stores are HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_split(labels: np.ndarray, expected: int, num_classes: int, where: str) -> None:
    if labels.shape[0] != expected:
        raise CifarArchiveError(f"{where}: {labels.shape[0]} images, expected {expected}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise CifarArchiveError(
            f"{where}: labels in [{labels.min()}, {labels.max()}], expected [0, {num_classes})."
        )
    counts = np.bincount(labels, minlength=num_classes)
    if expected % num_classes == 0 and not (counts == expected // num_classes).all():
        raise CifarArchiveError(
            f"{where}: class counts range {counts.min()}..{counts.max()}, expected {expected // num_classes} "
            "each (the official splits are balanced)."
        )


def convert_cifar(
    archive: str | os.PathLike,
    dataset: str,
    train_dest: str | os.PathLike,
    test_dest: str | os.PathLike,
    expected_train: int = TRAIN_SIZE,
    expected_test: int = TEST_SIZE,
) -> None:
    """Convert an official CIFAR archive (``dataset`` 'cifar10' or 'cifar100') into two image stores.

    Everything is read and checked before either store is written, so a bad archive leaves
    no store behind.
    """
    if dataset not in LAYOUTS:
        raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}")
    layout = LAYOUTS[dataset]
    archive = Path(archive)
    if not archive.is_file():
        raise CifarArchiveError(
            f"{archive} does not exist; run the download step for {dataset} first."
        )
    meta_name = f"{layout.folder}/{layout.meta_member}"
    split_members = {
        "train": [f"{layout.folder}/{name}" for name in layout.train_members],
        "test": [f"{layout.folder}/{layout.test_member}"],
    }
    members = _read_members(archive, [meta_name, *split_members["train"], *split_members["test"]])

    meta = members[meta_name]
    if layout.names_key not in meta:
        raise CifarArchiveError(f"{archive}: {meta_name} lacks key {layout.names_key!r}.")
    class_names = [name.decode() for name in meta[layout.names_key]]
    if len(class_names) != layout.num_classes:
        raise CifarArchiveError(
            f"{archive}: {meta_name} names {len(class_names)} classes, expected {layout.num_classes}."
        )
    splits = {}
    for split, names in split_members.items():
        parts = [_images_and_labels(members[name], f"{archive}:{name}", layout) for name in names]
        images = np.concatenate([part[0] for part in parts])
        labels = np.concatenate([part[1] for part in parts])
        expected = expected_train if split == "train" else expected_test
        _check_split(labels, expected, layout.num_classes, f"{archive} ({split} split)")
        splits[split] = (images, labels)

    for split, dest in (("train", train_dest), ("test", test_dest)):
        images, labels = splits[split]
        meta_out = {
            "source": archive.name,
            "dataset": dataset,
            "split": split,
            "classes": class_names,
        }
        with ImageStoreWriter(
            dest, len(labels), 32, 32, layout.num_classes, meta=meta_out
        ) as writer:
            writer.write(0, images, labels)


def write_random_cifar_archive(
    path: str | os.PathLike, dataset: str, train_images: int, test_images: int, seed: int
) -> None:
    """A CIFAR python archive of uniform random pixels in the official layout (the canary's
    stand-in for the download): the same members, pickled dicts, (N, 3072) uint8 colour planes and
    label key as the official file, so convert_cifar reads it unchanged. Labels go round the
    classes, so every split is class-balanced when its size is a multiple of the class count."""
    from dra.io import atomic_file

    if dataset not in LAYOUTS:
        raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}")
    layout = LAYOUTS[dataset]
    rng = np.random.default_rng(seed)

    def batch(n: int, offset: int) -> dict:
        labels = [(offset + index) % layout.num_classes for index in range(n)]
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), layout.label_key: labels}

    # the official archive splits the training set evenly over its train members
    members = {}
    per_member, start = -(-train_images // len(layout.train_members)), 0
    for name in layout.train_members:
        count = min(per_member, train_images - start)
        members[name] = batch(count, start)
        start += count
    members[layout.test_member] = batch(test_images, 0)
    members[layout.meta_member] = {layout.names_key: [f"class{index}".encode() for index in range(layout.num_classes)]}
    with atomic_file(path) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{layout.folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
