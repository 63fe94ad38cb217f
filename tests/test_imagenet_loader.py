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


def test_eval_store_holds_the_res256_crop224_images_in_list_order(index, tmp_path):
    from dra.data.imagenet_loader import write_eval_store
    from dra.data.store import open_image_store

    _, dest = index
    store = open_image_store(write_eval_store(dest, tmp_path / "test", num_classes=2, batch_size=1, num_workers=0))
    expected = ImageNetIndexDataset(dest, "eval", imagenet_transform("eval"))
    assert store.images.shape == (2, 224, 224, 3) and store.labels.tolist() == [1, 0]
    for row in range(2):
        np.testing.assert_array_equal(store.images[row], expected[row][0].permute(1, 2, 0).numpy())


def synthetic_store(path, n=5, size=32):
    from dra.data.store import ImageStoreWriter

    rng = np.random.default_rng(3)
    with ImageStoreWriter(path, n, size, size, 2, meta={"source": "test"}) as writer:
        writer.write(0, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2)
    return path


def test_training_batches_mix_real_and_synthetic_and_do_not_depend_on_workers(index, tmp_path):
    from dra.training.imagenet_batches import ImageNetBatches, batch_plan

    _, dest = index
    synthetic = synthetic_store(tmp_path / "syn")
    plan = [(np.array([0, 4]), np.array([1, 3, 3])), (np.array([5, 2]), np.array([0, 4, 2]))]

    def run(workers, first_step=0):
        batches = ImageNetBatches(str(dest), str(synthetic), 24, seed=5, num_workers=workers)
        return list(batches.epoch(2, first_step, plan[first_step:]))

    in_process, with_workers = run(0), run(2)
    assert len(in_process) == 2
    for (index_a, syn_a, images_a, labels_a), (index_b, syn_b, images_b, labels_b) in zip(in_process, with_workers):
        np.testing.assert_array_equal(index_a, index_b)
        np.testing.assert_array_equal(syn_a, syn_b)
        np.testing.assert_array_equal(labels_a, labels_b)
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
        assert images_a.shape == (5, 3, 24, 24) and images_a.dtype == torch.uint8
        assert sorted(syn_a.tolist()) == [False, False, True, True, True]
    # the order inside a batch is the plan's shuffle; labels follow the rows they came from
    store_index, is_synthetic, _, labels = in_process[0]
    expected_index, expected_synthetic, _ = batch_plan(5, 2, 0, *plan[0])
    np.testing.assert_array_equal(store_index, expected_index)
    real_labels = read_index(dest, "train")[2]
    assert labels.tolist() == [int(i % 2) if s else int(real_labels[i]) for i, s in zip(store_index, is_synthetic)]
    # resumed at step 1, the batch is the one the uninterrupted run saw
    torch.testing.assert_close(run(0, first_step=1)[0][2], in_process[1][2], rtol=0, atol=0)
    # another epoch crops differently
    other = ImageNetBatches(str(dest), str(synthetic), 24, seed=5, num_workers=0)
    assert not torch.equal(next(other.epoch(3, 0, plan))[2], in_process[0][2])


def test_each_rank_decodes_only_its_share_of_a_batch(index, tmp_path):
    from dra.training.imagenet_batches import ImageNetBatches

    _, dest = index
    synthetic = synthetic_store(tmp_path / "syn")
    plan = [(np.array([0, 4]), np.array([1, 3, 3]))]
    batches = ImageNetBatches(str(dest), str(synthetic), 24, seed=5, num_workers=0)
    whole = next(batches.epoch(0, 0, plan))
    # two ranks: rows [0, 3) and [3, 5), as dra.training.distributed shards a global batch of 5
    shares = [next(batches.epoch(0, 0, plan, shard=lambda size, r=r: [slice(0, 3), slice(3, 5)][r])) for r in (0, 1)]
    for share, rows in zip(shares, (slice(0, 3), slice(3, 5))):
        np.testing.assert_array_equal(share[0], whole[0])  # indices stay whole (DRA targets, noise)
        torch.testing.assert_close(share[2], whole[2][rows], rtol=0, atol=0)
        np.testing.assert_array_equal(share[3], whole[3][rows])
