"""ImageNet folder validation on tiny fake folders, and the shipped RobustBench id list."""

import csv
import hashlib
import json

import pytest

from dra.data.imagenet import (
    ROBUSTBENCH_EVAL_IDS,
    ImageNetFolderError,
    check_robustbench_eval_ids,
    index_imagenet,
)

WNIDS = ["n01440764", "n01443537", "n02102040"]


def _fake_imagenet(root, train_per_class=3, val_per_class=2):
    for label, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        (root / "val" / wnid).mkdir(parents=True)
        for i in range(train_per_class):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(b"jpeg")
        for i in range(val_per_class):
            (root / "val" / wnid / f"ILSVRC2012_val_{label * 10 + i:08d}.JPEG").write_bytes(b"jpeg")
        (root / "train" / wnid / "notes.txt").write_text("not an image")
    ids = root / "ids.txt"
    ids.write_text(
        "n02102040/ILSVRC2012_val_00000020.JPEG\nn01440764/ILSVRC2012_val_00000001.JPEG\n"
    )
    return ids


def _index(root, ids, dest):
    return index_imagenet(root, dest, expected_train=9, expected_val=6, num_classes=3, eval_ids=ids)


def _rows(path):
    with open(path) as handle:
        return [(row["path"], int(row["label"])) for row in csv.DictReader(handle)]


def test_index_lists_paths_and_labels_sorted_by_wnid(tmp_path):
    root = tmp_path / "imagenet"
    ids = _fake_imagenet(root)
    summary = _index(root, ids, tmp_path / "index")
    assert (summary["train"], summary["val"], summary["eval"]) == (9, 6, 2)
    assert (tmp_path / "index" / "classes.txt").read_text().split() == WNIDS
    train = _rows(tmp_path / "index" / "train.csv")
    assert len(train) == 9
    assert train[0] == ("train/n01440764/n01440764_0.JPEG", 0)
    assert train[-1] == ("train/n02102040/n02102040_2.JPEG", 2)
    assert all((root / path).is_file() for path, _ in train)
    # evaluation rows keep the id list's order, labels from the sorted wnids
    assert _rows(tmp_path / "index" / "eval.csv") == [
        ("val/n02102040/ILSVRC2012_val_00000020.JPEG", 2),
        ("val/n01440764/ILSVRC2012_val_00000001.JPEG", 0),
    ]
    assert json.loads((tmp_path / "index" / "meta.json").read_text())["num_classes"] == 3


def test_missing_root_says_where_to_get_imagenet(tmp_path):
    with pytest.raises(
        ImageNetFolderError, match=r"does not exist\. ImageNet \(ILSVRC-2012\).*image-net\.org"
    ):
        _index(tmp_path / "nowhere", tmp_path / "ids.txt", tmp_path / "index")


def test_missing_val_folder(tmp_path):
    root = tmp_path / "imagenet"
    ids = _fake_imagenet(root)
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()
    with pytest.raises(ImageNetFolderError, match=r"val is missing.*ILSVRC2012_img_val\.tar"):
        _index(root, ids, tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_unsorted_val_folder(tmp_path):
    root = tmp_path / "imagenet"
    ids = _fake_imagenet(root)
    for path in list((root / "val").rglob("*.JPEG")):
        path.rename(root / "val" / path.name)
    for folder in (root / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()
    with pytest.raises(ImageNetFolderError, match="not sorted into <wnid>/ folders"):
        _index(root, ids, tmp_path / "index")


def test_partial_train_split_reports_counts(tmp_path):
    root = tmp_path / "imagenet"
    ids = _fake_imagenet(root)
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_2.JPEG").unlink()
    with pytest.raises(
        ImageNetFolderError, match="holds 8 images, expected 9: the train split is partial"
    ):
        _index(root, ids, tmp_path / "index")


def test_missing_class_folder(tmp_path):
    root = tmp_path / "imagenet"
    ids = _fake_imagenet(root)
    with pytest.raises(ImageNetFolderError, match="has 3 class folders, expected 1000"):
        index_imagenet(root, tmp_path / "index", expected_train=9, expected_val=6, eval_ids=ids)


def test_eval_image_absent_from_val(tmp_path):
    root = tmp_path / "imagenet"
    ids = _fake_imagenet(root)
    ids.write_text("n01443537/ILSVRC2012_val_00000001.JPEG\n")  # exists only under n01440764
    with pytest.raises(
        ImageNetFolderError, match=r"1 images of the evaluation list ids\.txt are not in"
    ):
        _index(root, ids, tmp_path / "index")


def test_shipped_robustbench_ids_are_intact():
    # robustbench/data.py: RobustBench evaluates ImageNet on 5000 fixed validation images.
    ids = check_robustbench_eval_ids()
    assert len(ids) == 5000 == len(set(ids))
    assert len({image_id.split("/")[0] for image_id in ids}) == 997
    assert ids[0] == "n09468604/ILSVRC2012_val_00015253.JPEG"
    assert all(image_id.startswith("n") and image_id.endswith(".JPEG") for image_id in ids)
    digest = hashlib.sha256(ROBUSTBENCH_EVAL_IDS.read_bytes()).hexdigest()
    assert digest == "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574"


def test_modified_id_list_is_refused(tmp_path):
    copy = tmp_path / "ids.txt"
    copy.write_text(ROBUSTBENCH_EVAL_IDS.read_text() + "\nn01440764/ILSVRC2012_val_00000293.JPEG")
    with pytest.raises(ImageNetFolderError, match="missing or modified"):
        check_robustbench_eval_ids(copy)
