"""ImageNet loading through the prepare_imagenet index: transforms (torchvision training recipe,
RobustBench Res256Crop224, ADM center crop) and the DataLoader protocol."""

import numpy as np
import pytest
import torch
from PIL import Image

from dra.data.imagenet import ImageNetFolderError, index_imagenet
from dra.data.imagenet_loader import (ImageNetIndexDataset, adm_center_crop, imagenet_loader, imagenet_transform,
                                      read_index)

WNIDS = ("n01440764", "n01443537")


def gradient_image(width, height, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.BILINEAR)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    sizes = [(500, 375), (300, 400), (256, 256)]
    for split, count in (("train", 3), ("val", 2)):
        for label, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                image = gradient_image(*sizes[k], seed=10 * label + k)
                name = folder / f"{wnid}_{k}.JPEG"
                if split == "train" and label == 1 and k == 0:
                    image.convert("L").save(name, format="JPEG")  # greyscale, as some ImageNet files
                elif split == "train" and label == 1 and k == 1:
                    image.convert("CMYK").save(name, format="JPEG")  # CMYK, as some ImageNet files
                elif split == "train" and label == 1 and k == 2:
                    image.save(name, format="PNG")  # a PNG named .JPEG, as n02105855_2933.JPEG
                else:
                    image.save(name, format="JPEG", quality=95)
    ids = root / "eval_ids.txt"
    ids.write_text(f"{WNIDS[1]}/{WNIDS[1]}_0.JPEG\n{WNIDS[0]}/{WNIDS[0]}_1.JPEG\n")
    dest = root / "index"
    index_imagenet(root, dest, expected_train=6, expected_val=4, num_classes=2, eval_ids=ids)
    return root, dest


def test_index_rows_are_the_dataset_rows(index):
    root, dest = index
    found_root, paths, labels = read_index(dest, "train")
    assert found_root == root.resolve() and len(paths) == 6 and labels.tolist() == [0, 0, 0, 1, 1, 1]
    dataset = ImageNetIndexDataset(dest, "eval", imagenet_transform("eval"))
    image, label, row = dataset[0]
    assert (label, row) == (1, 0) and image.shape == (3, 224, 224) and image.dtype == torch.uint8


def test_eval_transform_is_res256_crop224(index):
    root, dest = index
    dataset = ImageNetIndexDataset(dest, "val", imagenet_transform("eval"))
    image, _, _ = dataset[0]  # 500x375 -> short side 256: (341, 256) (torchvision truncates the long side)
    with Image.open(root / dataset.paths[0]) as source:
        resized = source.convert("RGB").resize((int(256 * 500 / 375), 256), Image.BILINEAR)
    left, top = round((resized.width - 224) / 2), round((resized.height - 224) / 2)
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_adm_center_crop_geometry():
    square = gradient_image(256, 256, 0)
    np.testing.assert_array_equal(np.asarray(adm_center_crop(square, 256)), np.asarray(square))
    # 1200x520: the short side 520 >= 512, so one box halving to 600x260, then bicubic to (591, 256)
    wide = gradient_image(1200, 520, 1)
    expected = wide.resize((600, 260), Image.BOX).resize((round(600 * 256 / 260), 256), Image.BICUBIC)
    left = (expected.width - 256) // 2
    np.testing.assert_array_equal(np.asarray(adm_center_crop(wide, 256)),
                                  np.asarray(expected.crop((left, 0, left + 256, 256))))


def test_odd_files_decode_to_rgb(index):
    _, dest = index
    dataset = ImageNetIndexDataset(dest, "train", imagenet_transform("adm256"))
    for row in (3, 4, 5):  # greyscale, CMYK, PNG
        image, label, _ = dataset[row]
        assert image.shape == (3, 256, 256) and label == 1
    grey = dataset[3][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_train_loader_is_random_but_seeded(index):
    _, dest = index
    dataset = ImageNetIndexDataset(dest, "train", imagenet_transform("train"))

    def first_batch(seed, workers):
        torch.manual_seed(123)  # the global RNG must not matter
        return next(iter(imagenet_loader(dataset, 6, num_workers=workers, shuffle=True, seed=seed)))

    images, labels, rows = first_batch(0, 2)
    assert images.shape == (6, 3, 224, 224) and images.dtype == torch.uint8
    assert sorted(rows.tolist()) == list(range(6)) and labels.tolist() == [int(r >= 3) for r in rows]
    again = first_batch(0, 2)
    assert torch.equal(again[0], images) and torch.equal(again[2], rows)
    assert not torch.equal(first_batch(1, 2)[0], images)


def test_missing_and_corrupt_files_are_named(index, tmp_path):
    root, dest = index
    with pytest.raises(ImageNetFolderError, match="prepare_imagenet"):
        read_index(tmp_path, "train")
    dataset = ImageNetIndexDataset(dest, "val", imagenet_transform("eval"))
    broken = root / dataset.paths[3]
    original = broken.read_bytes()
    try:
        broken.write_bytes(b"not a jpeg")
        with pytest.raises(ImageNetFolderError, match=broken.name):
            dataset[3]
    finally:
        broken.write_bytes(original)
    with pytest.raises(ValueError, match="train, eval or adm256"):
        imagenet_transform("center")
