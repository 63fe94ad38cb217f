"""CIFAR archives in the official layout (tar.gz of pickled dicts) converted to stores."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from dra.data.cifar import CifarArchiveError, convert_cifar
from dra.data.store import open_image_store


def _add(tar, name, obj, protocol=2):
    raw = pickle.dumps(obj, protocol=protocol)
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def _balanced_batch(rng, n, num_classes, label_key):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(i % num_classes) for i in rng.permutation(n)]
    return {
        b"batch_label": b"fixture",
        label_key: labels,
        b"data": data,
        b"filenames": [b"x.png"] * n,
    }


def _cifar10_archive(path, rng, per_batch=20, test=10, corrupt=None, protocol=2, edit=None):
    """Random batches in the official layout; `edit(batches)` may change them before they are written."""
    batches = {
        f"data_batch_{i}": _balanced_batch(rng, per_batch, 10, b"labels") for i in range(1, 6)
    }
    batches["test_batch"] = _balanced_batch(rng, test, 10, b"labels")
    if edit is not None:
        edit(batches)
    with tarfile.open(path, "w:gz") as tar:
        _add(
            tar,
            "cifar-10-batches-py/batches.meta",
            {
                b"label_names": [f"class{i}".encode() for i in range(10)],
                b"num_cases_per_batch": per_batch,
            },
            protocol,
        )
        # test_batch first: the official archive does not list members in numeric order either
        for name in [
            "test_batch",
            "data_batch_3",
            "data_batch_1",
            "data_batch_2",
            "data_batch_5",
            "data_batch_4",
        ]:
            if name != corrupt:
                _add(tar, f"cifar-10-batches-py/{name}", batches[name], protocol)
    return batches


def _convert_fixture_archive(archive, folder):
    """The 100 training and 10 test images of _cifar10_archive's defaults into folder/{train,test}."""
    convert_cifar(archive, "cifar10", folder / "train", folder / "test", expected_train=100, expected_test=10)


def _expected_hwc(data):
    """Pixel (y, x, c) of image i is byte c*1024 + y*32 + x of its row (three colour planes)."""
    n = data.shape[0]
    out = np.empty((n, 32, 32, 3), np.uint8)
    for c in range(3):
        for y in range(32):
            out[:, y, :, c] = data[:, c * 1024 + y * 32 : c * 1024 + y * 32 + 32]
    return out


# Protocol 2 is what the official (Python 2) files use; 4 is how a Python 3 re-pickle looks.
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_round_trip_is_pixel_exact(tmp_path, protocol):
    rng = np.random.default_rng(0)
    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = _cifar10_archive(archive, rng, protocol=protocol)
    _convert_fixture_archive(archive, tmp_path)

    train, test = open_image_store(tmp_path / "train"), open_image_store(tmp_path / "test")
    train_data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    train_labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, _expected_hwc(train_data))
    np.testing.assert_array_equal(train.labels, train_labels)
    np.testing.assert_array_equal(test.images, _expected_hwc(batches["test_batch"][b"data"]))
    np.testing.assert_array_equal(test.labels, batches["test_batch"][b"labels"])
    assert train.meta["classes"] == [f"class{i}" for i in range(10)]
    assert (train.meta["n"], test.meta["n"], train.num_classes) == (100, 10, 10)


def test_known_pixel_from_colour_planes(tmp_path):
    def one_known_pixel(batches):
        row = batches["data_batch_1"][b"data"][0]
        row[:] = 0
        row[0 * 1024 + 2 * 32 + 5] = 11  # red   at y=2, x=5
        row[1 * 1024 + 2 * 32 + 5] = 22  # green at y=2, x=5
        row[2 * 1024 + 2 * 32 + 5] = 33  # blue  at y=2, x=5

    archive = tmp_path / "cifar-10-python.tar.gz"
    _cifar10_archive(archive, np.random.default_rng(1), edit=one_known_pixel)
    _convert_fixture_archive(archive, tmp_path)
    image = open_image_store(tmp_path / "train").images[0]
    assert image[2, 5].tolist() == [11, 22, 33]
    assert int(image.sum()) == 66


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    archive = tmp_path / "cifar-100-python.tar.gz"
    train = _balanced_batch(rng, 200, 100, b"fine_labels")
    train[b"coarse_labels"] = [0] * 200
    test = _balanced_batch(rng, 100, 100, b"fine_labels")
    with tarfile.open(archive, "w:gz") as tar:
        _add(
            tar,
            "cifar-100-python/meta",
            {
                b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [b"c"] * 20,
            },
        )
        _add(tar, "cifar-100-python/train", train)
        _add(tar, "cifar-100-python/test", test)
    convert_cifar(
        archive,
        "cifar100",
        tmp_path / "train",
        tmp_path / "test",
        expected_train=200,
        expected_test=100,
    )
    store = open_image_store(tmp_path / "train")
    np.testing.assert_array_equal(store.labels, train[b"fine_labels"])
    np.testing.assert_array_equal(store.images, _expected_hwc(train[b"data"]))
    assert store.num_classes == 100


def test_official_counts_are_enforced(tmp_path):
    rng = np.random.default_rng(3)
    archive = tmp_path / "cifar-10-python.tar.gz"
    _cifar10_archive(archive, rng)
    # default expectation is the official 50,000 / 10,000 (the cifar-10-python.tar.gz archive)
    with pytest.raises(CifarArchiveError, match="100 images, expected 50000"):
        convert_cifar(archive, "cifar10", tmp_path / "train", tmp_path / "test")
    assert not (tmp_path / "train").exists() and not (tmp_path / "test").exists()


def test_missing_member_is_named(tmp_path):
    rng = np.random.default_rng(4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    _cifar10_archive(archive, rng, corrupt="data_batch_4")
    with pytest.raises(CifarArchiveError, match="data_batch_4"):
        convert_cifar(
            archive,
            "cifar10",
            tmp_path / "train",
            tmp_path / "test",
            expected_train=80,
            expected_test=10,
        )


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/batches.meta", {b"label_names": Exploit()})
    with pytest.raises(CifarArchiveError, match="refusing to load"):
        convert_cifar(archive, "cifar10", tmp_path / "train", tmp_path / "test")


def test_not_a_tarball(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(CifarArchiveError, match="not a readable tar.gz"):
        convert_cifar(archive, "cifar10", tmp_path / "train", tmp_path / "test")
