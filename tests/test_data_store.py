"""Image and feature stores: round trips, atomic writes, and refusal of inconsistent folders."""

import json

import numpy as np
import pytest

from dra.data.store import (
    FeatureStoreWriter,
    ImageStoreWriter,
    StoreError,
    open_feature_store,
    open_image_store,
)

FEATURE_META = {
    "layer": "dec.8x8_in1",
    "sigma": 0.1,
    "extra_view": False,
    "diffusion_model": "edm",
    "image_store": "data/cifar10/train",
}


def _random_images(n, rng, height=4, width=5):
    return rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8), rng.integers(
        0, 7, size=n
    )


def _write_store(path, images, labels, num_classes=7):
    with ImageStoreWriter(
        path, len(labels), images.shape[1], images.shape[2], num_classes, meta={"source": "test"}
    ) as writer:
        writer.write(0, images, labels)


def test_image_store_round_trip_out_of_order_chunks(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = _random_images(10, rng)
    dest = tmp_path / "store"
    with ImageStoreWriter(dest, 10, 4, 5, 7, meta={"source": "test"}) as writer:
        writer.write(6, images[6:], labels[6:])
        writer.write(0, images[:6], labels[:6])
    store = open_image_store(dest)
    np.testing.assert_array_equal(store.images, images)
    np.testing.assert_array_equal(store.labels, labels)
    assert store.images.dtype == np.uint8 and store.labels.dtype == np.int64
    assert isinstance(store.images, np.memmap) and isinstance(store.labels, np.memmap)
    assert store.meta == {
        "n": 10,
        "height": 4,
        "width": 5,
        "channels": 3,
        "num_classes": 7,
        "source": "test",
    }
    assert len(store) == 10 and store.num_classes == 7
    with pytest.raises(ValueError):
        store.images[0, 0, 0, 0] = 1  # read-only map
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temporary sibling left


def test_unwritten_rows_leave_no_store(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = _random_images(10, rng)
    with pytest.raises(StoreError, match="3 of 10 rows were never written"):
        with ImageStoreWriter(tmp_path / "store", 10, 4, 5, 7) as writer:
            writer.write(0, images[:4], labels[:4])
            writer.write(2, images[2:7], labels[2:7])  # overlapping write covers rows 2..6 once
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_writer_leaves_no_store_and_keeps_old_one(tmp_path):
    rng = np.random.default_rng(2)
    images, labels = _random_images(3, rng)
    dest = tmp_path / "store"
    _write_store(dest, images, labels)
    with pytest.raises(RuntimeError, match="crash"):
        with ImageStoreWriter(dest, 3, 4, 5, 7) as writer:
            writer.write(0, images[::-1].copy(), labels)
            raise RuntimeError("crash")
    np.testing.assert_array_equal(open_image_store(dest).images, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_writer_rejects_bad_chunks(tmp_path):
    with ImageStoreWriter(tmp_path / "store", 2, 4, 5, 7) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(0, np.zeros((2, 4, 5, 3), np.float32), np.zeros(2, np.int64))
        with pytest.raises(ValueError, match="outside"):
            writer.write(1, np.zeros((2, 4, 5, 3), np.uint8), np.zeros(2, np.int64))
        with pytest.raises(ValueError, match=r"labels in \[0, 7\]"):
            writer.write(0, np.zeros((2, 4, 5, 3), np.uint8), np.array([0, 7]))
        writer.write(0, np.zeros((2, 4, 5, 3), np.uint8), np.zeros(2, np.int64))


@pytest.fixture
def good_store(tmp_path):
    rng = np.random.default_rng(3)
    images, labels = _random_images(6, rng)
    dest = tmp_path / "store"
    _write_store(dest, images, labels)
    return dest


def test_refuses_missing_meta(good_store):
    (good_store / "meta.json").unlink()
    with pytest.raises(StoreError, match=r"meta\.json is missing"):
        open_image_store(good_store)


def test_refuses_count_disagreeing_with_meta(good_store):
    meta = json.loads((good_store / "meta.json").read_text())
    meta["n"] = 7
    (good_store / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        StoreError,
        match=r"images\.npy has shape \(6, 4, 5, 3\), but meta\.json says \(7, 4, 5, 3\)",
    ):
        open_image_store(good_store)


def test_refuses_wrong_label_dtype(good_store):
    np.save(good_store / "labels.npy", np.zeros(6, np.int32))
    with pytest.raises(StoreError, match=r"labels\.npy has dtype int32, expected int64"):
        open_image_store(good_store)


def test_refuses_truncated_images(good_store):
    path = good_store / "images.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StoreError, match=r"images\.npy has \d+ bytes, expected \d+"):
        open_image_store(good_store)


def test_refuses_labels_outside_num_classes(good_store):
    np.save(good_store / "labels.npy", np.array([0, 1, 2, 3, 4, 9], np.int64))
    with pytest.raises(StoreError, match=r"labels in \[0, 9\], outside \[0, 7\)"):
        open_image_store(good_store)


def test_refuses_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_image_store(tmp_path / "nowhere")


def test_feature_store_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    features = rng.standard_normal((5, 2, 8)).astype(np.float32)
    dest = tmp_path / "features"
    with FeatureStoreWriter(dest, 5, 2, 8, meta=FEATURE_META) as writer:
        writer.write(0, features[:3])
        writer.write(3, features[3:])
    store = open_feature_store(dest)
    assert store.features.dtype == np.float16 and store.features.shape == (5, 2, 8)
    # float16 keeps 11 significant bits: relative error <= 2**-11 for normal numbers.
    np.testing.assert_allclose(
        store.features.astype(np.float64), features, rtol=2**-11, atol=2**-24
    )
    assert (
        store.meta["layer"] == "dec.8x8_in1" and store.meta["views"] == 2 and store.meta["dim"] == 8
    )


def test_feature_writer_rejects_nan_and_float16_overflow(tmp_path):
    with FeatureStoreWriter(tmp_path / "f", 2, 1, 3, meta=FEATURE_META) as writer:
        with pytest.raises(ValueError, match="non-finite"):
            writer.write(0, np.array([[[0.0, np.nan, 1.0]], [[0.0, 0.0, 0.0]]]))
        with pytest.raises(ValueError, match="non-finite"):
            writer.write(0, np.array([[[0.0, 7e4, 1.0]], [[0.0, 0.0, 0.0]]]))  # > 65504
        writer.write(0, np.zeros((2, 1, 3)))


def test_feature_store_requires_provenance(tmp_path):
    with pytest.raises(ValueError, match="lacks keys"):
        FeatureStoreWriter(tmp_path / "f", 2, 1, 3, meta={"layer": "x"})
    with FeatureStoreWriter(tmp_path / "f", 1, 1, 3, meta=FEATURE_META) as writer:
        writer.write(0, np.zeros((1, 1, 3)))
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    del meta["sigma"]
    (tmp_path / "f" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"meta\.json lacks keys \['sigma'\]"):
        open_feature_store(tmp_path / "f")
