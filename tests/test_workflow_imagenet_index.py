"""The ImageNet data rule: the user's folder is validated and indexed, or the run stops saying why."""

from __future__ import annotations

import csv

import yaml

from workflow_helpers import copy_workflow, run_snakemake

WNIDS = ["n01440764", "n01443537", "n02102040"]


def fake_imagenet(root, train_per_class=3, val_per_class=2):
    for wnid in WNIDS:
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{wnid}_{split}_{i}.JPEG").write_bytes(b"jpeg")
    ids = root / "eval_ids.txt"
    ids.write_text(f"{WNIDS[2]}/{WNIDS[2]}_val_1.JPEG\n{WNIDS[0]}/{WNIDS[0]}_val_0.JPEG\n")
    return ids


def overlay(work, root, ids, train_images):
    source = {"kind": "imagenet_folder", "path": str(root), "train_images": train_images, "val_images": 6,
              "eval_ids": str(ids)}
    (work / "config" / "imagenet-test.yaml").write_text(
        # AutoAttack's subset must fit the 2 evaluation ids, and no figure measures 1000 of them
        # (both checked before any job)
        yaml.safe_dump({"data_dir": "results/imagenet-test/data",
                        "datasets": {"imagenet": {"source": source, "num_classes": 3, "eval_n": 2}},
                        "figures": {"figure6_models": []}})
    )


def test_imagenet_folder_is_validated_and_indexed(tmp_path):
    (tmp_path / "work").mkdir()
    work = copy_workflow(tmp_path / "work")
    ids = fake_imagenet(tmp_path / "ilsvrc")
    overlay(work, tmp_path / "ilsvrc", ids, train_images=9)
    # all_data indexes ImageNet once its folder is configured
    planned = run_snakemake(work, "all_data", "--dry-run", "--configfile", "config/imagenet-test.yaml", timeout=600)
    assert planned.returncode == 0 and "prepare_imagenet" in planned.stdout
    result = run_snakemake(work, "results/imagenet-test/data/imagenet/index", "--cores", "1",
                           "--configfile", "config/imagenet-test.yaml", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    index = work / "results/imagenet-test/data/imagenet/index"
    with open(index / "eval.csv") as handle:
        rows = list(csv.reader(handle))
    # the evaluation ids keep their order; labels follow the sorted wnids
    assert [row[-1] for row in rows if row[-1].isdigit()] == ["2", "0"]


def test_partial_imagenet_folder_stops_with_what_is_missing(tmp_path):
    (tmp_path / "work").mkdir()
    work = copy_workflow(tmp_path / "work")
    ids = fake_imagenet(tmp_path / "ilsvrc")
    overlay(work, tmp_path / "ilsvrc", ids, train_images=12)  # 9 are there
    result = run_snakemake(work, "results/imagenet-test/data/imagenet/index", "--cores", "1",
                           "--configfile", "config/imagenet-test.yaml", timeout=600)
    assert result.returncode != 0
    log = (work / "results/imagenet-test/data/imagenet/index.log").read_text()
    assert "12" in log and "9" in log
    assert not (work / "results/imagenet-test/data/imagenet/index").exists()
