"""DM-AT npz parts (np.savez: uncompressed image.npy / label.npy, DM-AT README.md) streamed into a store."""

import tracemalloc
import zipfile

import numpy as np
import pytest

from dra.data.store import open_image_store
from dra.data.synthetic import SyntheticFormatError, convert_synthetic


def _part(path, n, rng, num_classes=10, size=32):
    image = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    label = rng.integers(0, num_classes, size=n).astype(np.int64)
    np.savez(path, image=image, label=label)
    return image, label


def test_parts_concatenate_in_order_pixel_exact(tmp_path):
    rng = np.random.default_rng(0)
    first = _part(tmp_path / "50m_part1.npz", 10, rng)
    second = _part(tmp_path / "50m_part2.npz", 7, rng)
    n = convert_synthetic(
        [tmp_path / "50m_part1.npz", tmp_path / "50m_part2.npz"],
        tmp_path / "store",
        num_classes=10,
        chunk_images=3,
    )  # chunks straddle no part boundary by construction
    store = open_image_store(tmp_path / "store")
    assert n == 17 == len(store)
    np.testing.assert_array_equal(store.images, np.concatenate([first[0], second[0]]))
    np.testing.assert_array_equal(store.labels, np.concatenate([first[1], second[1]]))
    assert store.meta["source"] == ["50m_part1.npz", "50m_part2.npz"]
    assert store.meta["part_sizes"] == [10, 7]


def test_memory_stays_at_one_chunk(tmp_path):
    rng = np.random.default_rng(1)
    _part(tmp_path / "1m.npz", 2048, rng)  # 6.3 MB of pixels
    chunk_bytes = 128 * 32 * 32 * 3  # 393 KB
    tracemalloc.start()
    convert_synthetic([tmp_path / "1m.npz"], tmp_path / "store", num_classes=10, chunk_images=128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # One chunk of pixels plus its labels and a copy in zipfile's read path, never the part.
    assert peak < 4 * chunk_bytes, peak
    assert peak < 2048 * 32 * 32 * 3 / 4


def test_compressed_member_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    np.savez_compressed(
        tmp_path / "c.npz",
        image=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
        label=np.zeros(4, np.int64),
    )
    with pytest.raises(SyntheticFormatError, match=r"c\.npz: member image\.npy is compressed"):
        convert_synthetic([tmp_path / "c.npz"], tmp_path / "store", num_classes=10)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "image, label, message",
    [
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64), r"image\.npy is float32"),
        (
            np.zeros((4, 3, 32, 32), np.uint8),
            np.zeros(4, np.int64),
            r"expected uint8 \(N, H, W, 3\)",
        ),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int32), r"label\.npy is int32"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(5, np.int64), r"expected int64 \(4,\)"),
    ],
)
def test_wrong_arrays_are_refused(tmp_path, image, label, message):
    np.savez(tmp_path / "bad.npz", image=image, label=label)
    with pytest.raises(SyntheticFormatError, match=message):
        convert_synthetic([tmp_path / "bad.npz"], tmp_path / "store", num_classes=10)


def test_missing_key_and_label_range(tmp_path):
    np.savez(
        tmp_path / "keys.npz",
        images=np.zeros((2, 32, 32, 3), np.uint8),
        label=np.zeros(2, np.int64),
    )
    with pytest.raises(SyntheticFormatError, match=r"no member image\.npy"):
        convert_synthetic([tmp_path / "keys.npz"], tmp_path / "store", num_classes=10)
    np.savez(
        tmp_path / "c100.npz", image=np.zeros((2, 32, 32, 3), np.uint8), label=np.array([3, 57])
    )
    with pytest.raises(SyntheticFormatError, match=r"labels in \[3, 57\].*expected \[0, 10\)"):
        convert_synthetic([tmp_path / "c100.npz"], tmp_path / "store", num_classes=10)
    assert not (tmp_path / "store").exists()


def test_parts_with_different_resolutions_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    _part(tmp_path / "a.npz", 2, rng)
    _part(tmp_path / "b.npz", 2, rng, size=16)
    with pytest.raises(SyntheticFormatError, match="share a resolution"):
        convert_synthetic(
            [tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "store", num_classes=10
        )


def test_corrupt_pixels_fail_the_zip_crc(tmp_path):
    rng = np.random.default_rng(4)
    _part(tmp_path / "p.npz", 8, rng)
    raw = bytearray((tmp_path / "p.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "p.npz") as archive:
        info = archive.getinfo("image.npy")
    # the local header is 30 bytes + name + extra (lengths at bytes 26 and 28); then the npy bytes
    local = info.header_offset
    name_length = int.from_bytes(raw[local + 26 : local + 28], "little")
    extra_length = int.from_bytes(raw[local + 28 : local + 30], "little")
    position = local + 30 + name_length + extra_length + 128 + 5000  # npy header is 128 bytes here
    raw[position] ^= 0xFF
    (tmp_path / "p.npz").write_bytes(bytes(raw))
    with pytest.raises(SyntheticFormatError, match="is corrupt"):
        convert_synthetic([tmp_path / "p.npz"], tmp_path / "store", num_classes=10)
    assert not (tmp_path / "store").exists()


def test_part_with_fewer_images_than_the_config_says_is_refused_before_any_copy(tmp_path):
    rng = np.random.default_rng(3)
    _part(tmp_path / "50m_part1.npz", 10, rng)
    _part(tmp_path / "50m_part2.npz", 6, rng)
    parts = [tmp_path / "50m_part1.npz", tmp_path / "50m_part2.npz"]
    with pytest.raises(SyntheticFormatError,
                       match=r"50m_part2.npz holds 6 images but the config says images: 7 \(parts\[1\]"):
        convert_synthetic(parts, tmp_path / "store", num_classes=10, expected_images=[10, 7])
    assert not (tmp_path / "store").exists()
    assert convert_synthetic(parts, tmp_path / "store", num_classes=10, expected_images=[10, 6]) == 16
