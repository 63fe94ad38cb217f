"""Image and feature stores: folders of ``.npy`` arrays read through memory maps.

A store is written once by a writer that fills ``.npy`` memory maps inside a temporary
sibling folder and renames it into place only after every row was written and
``meta.json`` agrees with the arrays. Readers get read-only memory maps, so a 50M-image
synthetic set costs page cache, not process memory, and many data-loader workers share it.

Image store::

    images.npy  uint8  (N, H, W, 3)
    labels.npy  int64  (N,)
    meta.json   {"n", "height", "width", "channels": 3, "num_classes", "source", ...}

A store may instead be made of parts (the synthetic ImageNet set, sampled by independent jobs)::

    meta.json   {"n", "height", "width", "channels": 3, "num_classes", "parts": ["part0000", ...], ...}
    part0000/   an image store holding rows [0, n_0), part0001/ the next rows, ...

It reads as one store: ``images`` is a ``PartedRows`` view that indexes across the parts.

Feature store (aligned index-for-index with one image store)::

    features.npy float16 (N, V, D)
    meta.json    {"n", "views", "dim", "layer", "sigma", "extra_view", "diffusion_model",
                  "image_store"}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dra.io import atomic_dir

IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"

FEATURE_META_KEYS = ("layer", "sigma", "extra_view", "diffusion_model", "image_store")


class StoreError(ValueError):
    """A store folder is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class ImageStore:
    images: np.ndarray  # read-only memmap, uint8 (N, H, W, 3)
    labels: np.ndarray  # read-only memmap, int64 (N,)
    meta: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


@dataclass(frozen=True)
class FeatureStore:
    features: np.ndarray  # read-only memmap, float16 (N, V, D)
    meta: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return int(self.features.shape[0])


# ---------------------------------------------------------------------------------------------
# reading


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise StoreError(
            f"{meta_path} is missing: {folder} is not a finished store. "
            "Delete the folder and rerun the step that writes it."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{meta_path} is not valid JSON ({error}); rerun the step that writes it.") from error
    if not isinstance(meta, dict):
        raise StoreError(f"{meta_path} must hold a JSON object, found {type(meta).__name__}.")
    return meta


def _meta_int(meta: dict[str, Any], key: str, meta_path: Path) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StoreError(
            f"{meta_path}: key '{key}' must be a non-negative integer, found {value!r}."
        )
    return value


def _open_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Memory-map ``path`` read-only after checking its header and size against expectations.

    The header is read by hand so that a truncated or mismatched file is refused with a
    message naming it, instead of numpy's generic mmap error.
    """
    if not path.is_file():
        raise StoreError(
            f"{path} is missing; delete the store folder and rerun the step that writes it."
        )
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"npy format version {version} is not written by stores")
            found_shape, fortran_order, found_dtype = header
        except ValueError as error:
            raise StoreError(f"{path} is not a readable .npy file ({error}).") from error
        data_offset = handle.tell()
    if found_dtype != dtype:
        raise StoreError(f"{path} has dtype {found_dtype}, expected {np.dtype(dtype)}.")
    if fortran_order:
        raise StoreError(f"{path} is stored in Fortran order; stores are C-ordered.")
    if tuple(found_shape) != tuple(shape):
        raise StoreError(
            f"{path} has shape {tuple(found_shape)}, but meta.json says {tuple(shape)}."
        )
    expected_bytes = data_offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    actual_bytes = path.stat().st_size
    if actual_bytes != expected_bytes:
        raise StoreError(
            f"{path} has {actual_bytes} bytes, expected {expected_bytes} for shape {tuple(shape)}: "
            "the file is truncated or padded; rerun the step that writes the store."
        )
    return np.load(path, mmap_mode="r")


def _open_folder(path: str | os.PathLike, what: str, fix: str) -> tuple[Path, dict[str, Any], Path]:
    folder = Path(path)
    if not folder.is_dir():
        raise StoreError(f"{what} {folder} does not exist; {fix}.")
    return folder, _read_meta(folder), folder / META_FILE


class PartedRows:
    """Rows of several (N_i, ...) arrays read as one (sum N_i, ...) array: an int, a slice or an
    integer array selects rows, as numpy does; the result is an ordinary array."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(part) for part in parts])
        self.shape = (int(self.offsets[-1]),) + tuple(parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            row = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} outside [0, {len(self)})")
            part = int(np.searchsorted(self.offsets, row, side="right")) - 1
            return self.parts[part][row - self.offsets[part]]
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError("PartedRows takes an int, a slice or a 1-d integer array")
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside [0, {len(self)})")
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(which):
            selected = which == part
            # sorted reads within a part keep memory-map access sequential
            out[selected] = self.parts[part][rows[selected] - self.offsets[part]]
        return out

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(part) for part in self.parts])
        return whole if dtype is None else whole.astype(dtype)


def open_image_store(path: str | os.PathLike) -> ImageStore:
    """Open an image store folder (one array or parts); its arrays are read-only memory maps."""
    folder, meta, meta_path = _open_folder(path, "image store", "run the step that prepares it first")
    n = _meta_int(meta, "n", meta_path)
    height = _meta_int(meta, "height", meta_path)
    width = _meta_int(meta, "width", meta_path)
    num_classes = _meta_int(meta, "num_classes", meta_path)
    if meta.get("channels") != 3:
        raise StoreError(f"{meta_path}: 'channels' must be 3, found {meta.get('channels')!r}.")
    if "parts" in meta:
        images, labels = _open_parts(folder, meta, n, height, width)
    else:
        images = _open_npy(folder / IMAGES_FILE, np.dtype(np.uint8), (n, height, width, 3))
        labels = _open_npy(folder / LABELS_FILE, np.dtype(np.int64), (n,))
    if n:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise StoreError(
                f"{folder / LABELS_FILE} holds labels in [{low}, {high}], outside [0, {num_classes}) "
                f"declared by {meta_path}."
            )
    return ImageStore(images=images, labels=labels, meta=meta, path=folder)


def _open_parts(folder: Path, meta: dict[str, Any], n: int, height: int, width: int):
    meta_path = folder / META_FILE
    names = meta["parts"]
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise StoreError(f"{meta_path}: 'parts' must be a non-empty list of part folder names.")
    parts = [open_image_store(folder / name) for name in names]
    for part in parts:
        if (part.meta["height"], part.meta["width"]) != (height, width):
            raise StoreError(f"{part.path} holds {part.meta['height']}x{part.meta['width']} images, but "
                             f"{meta_path} says {height}x{width}; rebuild the store from its parts.")
    total = sum(len(part) for part in parts)
    if total != n:
        raise StoreError(f"{meta_path} says n = {n}, but its parts hold {total} rows; rebuild the store.")
    return PartedRows([part.images for part in parts]), np.concatenate([np.asarray(part.labels) for part in parts])


def assemble_image_store(parts: list[str | os.PathLike], out: str | os.PathLike,
                         meta: dict[str, Any] | None = None) -> Path:
    """Join finished image stores, in order, into one store made of parts, without copying pixels:
    the part files are hard-linked (copied only where the filesystem cannot link them), so the
    sources may be deleted afterwards."""
    opened = [open_image_store(part) for part in parts]
    if not opened:
        raise ValueError(f"store {out}: no parts to assemble")
    first = opened[0].meta
    for part in opened[1:]:
        for key in ("height", "width", "num_classes"):
            if part.meta[key] != first[key]:
                raise StoreError(f"{part.path}: {key} = {part.meta[key]} differs from {opened[0].path} "
                                 f"({first[key]}); all parts of a store must agree.")
    names = [f"part{index:04d}" for index in range(len(opened))]
    structural = {"n": sum(len(part) for part in opened), "height": first["height"], "width": first["width"],
                  "channels": 3, "num_classes": first["num_classes"], "parts": names}
    with atomic_dir(out) as folder:
        for name, part in zip(names, opened):
            (folder / name).mkdir()
            for file in (IMAGES_FILE, LABELS_FILE, META_FILE):
                try:
                    os.link(part.path / file, folder / name / file)
                except OSError:  # another filesystem, or one without hard links
                    shutil.copy2(part.path / file, folder / name / file)
        with open(folder / META_FILE, "w") as handle:
            handle.write(json.dumps({**(meta or {}), **structural}, indent=2, sort_keys=True) + "\n")
    return Path(out)


def open_feature_store(path: str | os.PathLike) -> FeatureStore:
    """Open a feature store folder; ``features`` is a read-only float16 memory map."""
    folder, meta, meta_path = _open_folder(path, "feature store", "run the feature extraction step first")
    n = _meta_int(meta, "n", meta_path)
    views = _meta_int(meta, "views", meta_path)
    dim = _meta_int(meta, "dim", meta_path)
    missing = [key for key in FEATURE_META_KEYS if key not in meta]
    if missing:
        raise StoreError(f"{meta_path} lacks keys {missing}; rerun the feature extraction step.")
    features = _open_npy(folder / FEATURES_FILE, np.dtype(np.float16), (n, views, dim))
    return FeatureStore(features=features, meta=meta, path=folder)


# ---------------------------------------------------------------------------------------------
# writing


class _RowCoverage:
    """Which rows of [0, n) were written, kept as merged intervals (writes are mostly in order)."""

    def __init__(self, n: int):
        self.n = n
        self.intervals: list[list[int]] = []

    def add(self, start: int, stop: int) -> None:
        if self.intervals and self.intervals[-1][0] <= start <= self.intervals[-1][1]:
            self.intervals[-1][1] = max(self.intervals[-1][1], stop)
        else:
            self.intervals.append([start, stop])

    def missing(self) -> int:
        covered, reach = 0, 0
        for start, stop in sorted(self.intervals):
            start = max(start, reach)
            if stop > start:
                covered += stop - start
                reach = stop
        return self.n - covered


class _StoreWriter:
    """Shared protocol: memmaps in a temporary folder, meta.json and rename on a clean exit."""

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        meta: dict[str, Any] | None,
        structural: dict[str, Any],
    ):
        if n < 0:
            raise ValueError(f"store {path}: n must be >= 0, got {n}")
        user_meta = dict(meta or {})
        clashes = {
            key for key in structural if key in user_meta and user_meta[key] != structural[key]
        }
        if clashes:
            raise ValueError(
                f"store {path}: meta keys {sorted(clashes)} are set by the writer and disagree"
            )
        self.path = Path(path)
        self.n = n
        self.meta = {**user_meta, **structural}
        self._coverage = _RowCoverage(n)
        self._stack: contextlib.ExitStack | None = None
        self._folder: Path | None = None
        self._arrays: dict[str, np.ndarray] = {}

    def _create_arrays(self, folder: Path) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._folder = self._stack.enter_context(atomic_dir(self.path))
        self._arrays = self._create_arrays(self._folder)
        return self

    def _record(self, start: int, count: int) -> None:
        if self._folder is None:
            raise RuntimeError(f"store writer for {self.path} used outside its 'with' block")
        if start < 0 or start + count > self.n:
            raise ValueError(
                f"store {self.path}: rows [{start}, {start + count}) fall outside [0, {self.n})"
            )
        self._coverage.add(start, start + count)

    def _finish(self) -> None:
        missing = self._coverage.missing()
        if missing:
            raise StoreError(f"store {self.path}: {missing} of {self.n} rows were never written.")
        for array in self._arrays.values():
            array.flush()
        with open(self._folder / META_FILE, "w") as handle:
            handle.write(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    def __exit__(self, exc_type, exc, traceback) -> bool:
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._arrays = {}
                stack.__exit__(type(error), error, error.__traceback__)
                raise
        self._arrays = {}
        return bool(stack.__exit__(exc_type, exc, traceback))


class ImageStoreWriter(_StoreWriter):
    """Write an image store: ``with ImageStoreWriter(...) as w: w.write(start, images, labels)``."""

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        height: int,
        width: int,
        num_classes: int,
        meta: dict[str, Any] | None = None,
    ):
        structural = {
            "n": n,
            "height": height,
            "width": width,
            "channels": 3,
            "num_classes": num_classes,
        }
        super().__init__(path, n, meta, structural)
        self.height, self.width, self.num_classes = height, width, num_classes

    def _create_arrays(self, folder: Path) -> dict[str, np.ndarray]:
        shape = (self.n, self.height, self.width, 3)
        return {
            "images": np.lib.format.open_memmap(
                folder / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=shape
            ),
            "labels": np.lib.format.open_memmap(
                folder / LABELS_FILE, mode="w+", dtype=np.int64, shape=(self.n,)
            ),
        }

    def write(self, start: int, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        expected = (self.height, self.width, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"store {self.path}: images must be uint8 (B, {self.height}, {self.width}, 3) HWC, "
                f"got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"store {self.path}: labels must be integers of shape ({images.shape[0]},), "
                f"got {labels.dtype} {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"store {self.path}: labels in [{labels.min()}, {labels.max()}] fall outside "
                f"[0, {self.num_classes}) at rows starting {start}"
            )
        count = images.shape[0]
        self._record(start, count)
        self._arrays["images"][start : start + count] = images
        self._arrays["labels"][start : start + count] = labels


class FeatureStoreWriter(_StoreWriter):
    """Write a feature store: ``with FeatureStoreWriter(...) as w: w.write(start, features)``.

    ``meta`` must carry the provenance keys of the contract (layer, sigma, extra_view,
    diffusion_model, image_store) so a feature store always says where it came from.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        views: int,
        dim: int,
        meta: dict[str, Any] | None = None,
    ):
        missing = [key for key in FEATURE_META_KEYS if key not in (meta or {})]
        if missing:
            raise ValueError(f"feature store {path}: meta lacks keys {missing}")
        super().__init__(path, n, meta, {"n": n, "views": views, "dim": dim})
        self.views, self.dim = views, dim

    def _create_arrays(self, folder: Path) -> dict[str, np.ndarray]:
        shape = (self.n, self.views, self.dim)
        return {
            "features": np.lib.format.open_memmap(
                folder / FEATURES_FILE, mode="w+", dtype=np.float16, shape=shape
            )
        }

    def write(self, start: int, features: np.ndarray) -> None:
        features = np.asarray(features)
        if features.ndim != 3 or features.shape[1:] != (self.views, self.dim):
            raise ValueError(
                f"feature store {self.path}: features must be (B, {self.views}, {self.dim}), got {features.shape}"
            )
        # float16 overflows at 65504: a finite float32 feature can still become inf here,
        # which the check below reports.
        with np.errstate(over="ignore"):
            half = features.astype(np.float16)
        if not np.isfinite(half).all():
            raise ValueError(
                f"feature store {self.path}: non-finite values (NaN/inf, or beyond float16 range) "
                f"in rows starting {start}"
            )
        count = features.shape[0]
        self._record(start, count)
        self._arrays["features"][start : start + count] = half
