"""DM-AT's synthetic npz files into one image store, streamed.

DM-AT ships its generated sets as ``np.savez`` archives (DM-AT README.md): a zip whose
members ``image.npy`` (N, 32, 32, 3) uint8 and ``label.npy`` (N,) int64 are stored
uncompressed; the 50M sets come as four parts of 12.5M images (38.5 GB each). DM-AT loads
a file whole and concatenates it with CIFAR (DM-AT core/data/semisup.py), which needs RAM for twice the
pixels. Here each member's npy header is parsed inside the zip and the pixels are copied in
fixed-size chunks into the store's memory map, so memory stays at one chunk whatever the size.
"""

from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from dra.data.store import ImageStoreWriter

IMAGE_MEMBER = "image.npy"
LABEL_MEMBER = "label.npy"
LABEL_DTYPE = np.dtype("<i8")


class SyntheticFormatError(ValueError):
    """A synthetic npz part is not in DM-AT's format; the message names the file and member."""


@dataclass(frozen=True)
class _Member:
    shape: tuple[int, ...]
    dtype: np.dtype


def _read_npy_header(handle: BinaryIO, where: str) -> _Member:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(
                f"npy format version {version} is not written by np.savez for these arrays"
            )
    except ValueError as error:
        raise SyntheticFormatError(f"{where} is not a readable .npy member ({error}).") from None
    if fortran_order:
        raise SyntheticFormatError(
            f"{where} is stored in Fortran order; expected C order as np.savez writes."
        )
    return _Member(tuple(shape), dtype)


def _open_member(archive: zipfile.ZipFile, path: Path, name: str) -> BinaryIO:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise SyntheticFormatError(
            f"{path} has no member {name} (members: {archive.namelist()}); DM-AT's files hold "
            f"'{IMAGE_MEMBER}' and '{LABEL_MEMBER}'."
        ) from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise SyntheticFormatError(
            f"{path}: member {name} is compressed (zip method {info.compress_type}); DM-AT's files are "
            "written by np.savez without compression. Re-save it with np.savez, or download the original file."
        )
    return archive.open(info)


def _inspect_part(path: Path) -> tuple[int, int, int]:
    """Check one part's headers; return (n, height, width)."""
    if not path.is_file():
        raise SyntheticFormatError(f"{path} does not exist; run the synthetic download step first.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SyntheticFormatError(
            f"{path} is not a readable npz/zip file ({error}); download it again."
        ) from None
    with archive:
        with _open_member(archive, path, IMAGE_MEMBER) as handle:
            image = _read_npy_header(handle, f"{path}:{IMAGE_MEMBER}")
        with _open_member(archive, path, LABEL_MEMBER) as handle:
            label = _read_npy_header(handle, f"{path}:{LABEL_MEMBER}")
    if image.dtype != np.uint8 or len(image.shape) != 4 or image.shape[3] != 3:
        raise SyntheticFormatError(
            f"{path}:{IMAGE_MEMBER} is {image.dtype} {image.shape}; expected uint8 (N, H, W, 3) HWC."
        )
    if label.dtype != LABEL_DTYPE or label.shape != image.shape[:1]:
        raise SyntheticFormatError(
            f"{path}:{LABEL_MEMBER} is {label.dtype} {label.shape}; expected int64 ({image.shape[0]},) "
            f"to match {IMAGE_MEMBER}."
        )
    return image.shape[0], image.shape[1], image.shape[2]


def _read_exact(handle: BinaryIO, nbytes: int, where: str) -> bytes:
    data = handle.read(nbytes)
    if len(data) != nbytes:
        raise SyntheticFormatError(
            f"{where} ends early: wanted {nbytes} more bytes, got {len(data)}."
        )
    return data


def convert_synthetic(
    parts: list[str | os.PathLike],
    dest: str | os.PathLike,
    num_classes: int,
    chunk_images: int = 16384,
    expected_images: list[int] | None = None,
) -> int:
    """Concatenate the npz ``parts`` (in the order given) into one image store at ``dest``.

    ``expected_images``: the image count the config gives each part (checked before any copy).
    Returns the number of images. Memory use is one chunk of ``chunk_images`` images.
    """
    paths = [Path(part) for part in parts]
    if not paths:
        raise ValueError("convert_synthetic needs at least one npz part")
    shapes = [_inspect_part(path) for path in paths]
    if expected_images is not None:
        for index, (path, (n, _, _), expected) in enumerate(zip(paths, shapes, expected_images, strict=True)):
            if n != expected:
                raise SyntheticFormatError(
                    f"{path} holds {n} images but the config says images: {expected} (parts[{index}] of its "
                    "synthetic set): the download is another file than the config describes, or the count is "
                    "mistyped; fix the config entry (and its lock entry if the file is wrong)."
                )
    height, width = shapes[0][1:]
    for path, (_, part_height, part_width) in zip(paths, shapes):
        if (part_height, part_width) != (height, width):
            raise SyntheticFormatError(
                f"{path} holds {part_height}x{part_width} images but {paths[0]} holds {height}x{width}; "
                "parts of one set must share a resolution."
            )
    total = sum(n for n, _, _ in shapes)
    meta = {
        "source": [path.name for path in paths],
        "part_sizes": [n for n, _, _ in shapes],
    }
    row_bytes = height * width * 3
    with (
        ImageStoreWriter(dest, total, height, width, num_classes, meta=meta) as writer,
        tqdm(
            total=total,
            unit="img",
            unit_scale=True,
            desc=Path(dest).name,
            file=sys.stderr,
            mininterval=5.0,
        ) as progress,
    ):
        start = 0
        for path, (n, _, _) in zip(paths, shapes):
            try:
                with (
                    zipfile.ZipFile(path) as archive,
                    archive.open(IMAGE_MEMBER) as images,
                    archive.open(LABEL_MEMBER) as labels,
                ):
                    _read_npy_header(images, f"{path}:{IMAGE_MEMBER}")
                    _read_npy_header(labels, f"{path}:{LABEL_MEMBER}")
                    for offset in range(0, n, chunk_images):
                        count = min(chunk_images, n - offset)
                        pixels = _read_exact(images, count * row_bytes, f"{path}:{IMAGE_MEMBER}")
                        label_bytes = _read_exact(
                            labels, count * LABEL_DTYPE.itemsize, f"{path}:{LABEL_MEMBER}"
                        )
                        chunk_labels = np.frombuffer(label_bytes, dtype=LABEL_DTYPE)
                        if chunk_labels.min() < 0 or chunk_labels.max() >= num_classes:
                            raise SyntheticFormatError(
                                f"{path}:{LABEL_MEMBER} has labels in [{chunk_labels.min()}, {chunk_labels.max()}] "
                                f"near image {offset}; expected [0, {num_classes}). Wrong dataset's file?"
                            )
                        writer.write(
                            start + offset,
                            np.frombuffer(pixels, dtype=np.uint8).reshape(count, height, width, 3),
                            chunk_labels,
                        )
                        progress.update(count)
            except zipfile.BadZipFile as error:
                # zipfile checks each member's CRC-32 when its last byte is read.
                raise SyntheticFormatError(
                    f"{path} is corrupt ({error}); delete it and download it again."
                ) from None
            start += n
    return total


def write_random_synthetic_part(
    path: str | os.PathLike, images: int, image_size: int, num_classes: int, seed: int
) -> None:
    """A synthetic part of uniform random pixels in DM-AT's npz format (uncompressed ``image``
    (N, H, W, 3) uint8 and ``label`` (N,) int64), the canary's stand-in for a released set."""
    from dra.io import atomic_file

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (images, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, images).astype(LABEL_DTYPE)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, image=pixels, label=labels)
