"""The ImageNet track of the workflow, end to end and offline (issue 7's mini analogue).

The test builds what the paper downloads or owns, in the real formats, at toy size: an
ILSVRC-2012-style folder of JPEGs (10 classes), DINOv3 weights as timm's model.safetensors
(small instances of the same timm entries), a LightningDiT checkpoint in the release's layout
({'model', 'ema'}), a VA-VAE ({'state_dict'}) and its latents_stats.pt. A local HTTP server on
127.0.0.1 serves the downloads. Snakemake then runs every ImageNet rule: downloads, folder
validation, evaluation store, synthetic set sampled by two independent jobs and joined,
LightningDiT features of the JPEGs and of the synthetic set, training of DM-AT and DM-AT+DRA cells
from the pretrained weights, AutoAttack and Table 1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from dra.data.store import PartedRows, open_feature_store, open_image_store
from dra.diffusion.lightningdit import LightningDiT
from dra.diffusion.vavae import VAVAE
from hub_server import COMMIT_1, HubServer
from workflow_helpers import copy_workflow, run_snakemake

pytestmark = pytest.mark.slow

WNIDS = [f"n0{1440764 + k}" for k in range(10)]
TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 1
# a VA-VAE with two downsamplings (32 px -> 8x8x4 latents) and a 4-block LightningDiT over them
TINY_VAE = dict(embed_dim=4, ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=32)
TINY_DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=10)
TINY_CONVNEXT = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2)
CELLS = ["imagenet/convnext-b/dm-at/syntiny-bs8-ep1", "imagenet/convnext-b/dm-at+dra/syntiny-bs8-ep1",
         "imagenet/vit-b-16/dm-at+dra/syntiny-bs8-ep1"]


def write_imagenet_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for label, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True)
            for k in range(count):
                # a class colour plus noise, at ImageNet-like aspect ratios
                size = [(60, 45), (40, 52), (48, 48)][k % 3]
                colour = np.array([25 * label, 255 - 25 * label, 120])
                pixels = np.clip(colour + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                name = f"ILSVRC2012_val_{label:04d}{k:04d}.JPEG" if split == "val" else f"{wnid}_{k}.JPEG"
                Image.fromarray(pixels).save(root / split / wnid / name, format="JPEG", quality=90)
    ids = root / "eval_ids.txt"
    ids.write_text("".join(f"{wnid}/ILSVRC2012_val_{label:04d}0000.JPEG\n" for label, wnid in enumerate(WNIDS)))
    return ids


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():  # away from adaLN-Zero, so that the blocks and the decoder do something
        for parameter in module.parameters():
            parameter.normal_(0, 0.05)
    return module


def write_downloads(folder: Path) -> dict[str, str]:
    """The released files in their formats; returns file name -> sha256."""
    import timm

    folder.mkdir()
    dit = randomized(LightningDiT(**TINY_DIT), 0)
    torch.save({"model": dit.state_dict(), "ema": dit.state_dict()}, folder / "dit.pt")
    torch.save({"state_dict": randomized(VAVAE(**TINY_VAE), 1).state_dict()}, folder / "vae.pt")
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, folder / "latents_stats.pt")
    for file, name, kwargs in (("convnext.safetensors", "convnext_base.dinov3_lvd1689m", TINY_CONVNEXT),
                               ("vit.safetensors", "vit_base_patch16_dinov3.lvd1689m", TINY_VIT)):
        torch.manual_seed(2)
        released = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)  # DINOv3 ships no head
        save_file({k: v.contiguous() for k, v in released.state_dict().items()}, folder / file)
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served") / "files"
    digests = write_downloads(folder)
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    # the DINOv3 weights come from the Hub as timm's repositories hold them (huggingface_hub, HF_ENDPOINT)
    hub = HubServer({COMMIT_1: {(PRETRAINED_REPOS[arch], "model.safetensors"): (folder / file).read_bytes()
                                for arch, file in PRETRAINED_FILES.items()}})
    yield f"http://127.0.0.1:{httpd.server_address[1]}", digests, hub
    httpd.shutdown()
    hub.close()


PRETRAINED_REPOS = {"convnext-b": "timm/convnext_base.dinov3_lvd1689m",
                    "vit-b-16": "timm/vit_base_patch16_dinov3.lvd1689m"}
PRETRAINED_FILES = {"convnext-b": "convnext.safetensors", "vit-b-16": "vit.safetensors"}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def overlay(base_url: str, digests: dict[str, str], imagenet: Path, eval_ids: Path) -> dict:
    def download(name, checked=True):
        # hf: null replaces config.yaml's Hub entry by this server's URL
        return {"url": f"{base_url}/{name}", "hf": None, "sha256": digests[name] if checked else None}

    def from_hub(arch):  # no sha256 in the config: the Hub's LFS sha256 is checked, the commit locked
        return {"hf": {"repo": PRETRAINED_REPOS[arch], "type": "model", "path": "model.safetensors",
                       "revision": "main"}, "sha256": None}

    recipe = {"precision": {"bf16": False, "channels_last": False, "compile": False}}
    return {
        "scale": "imagenet-mini",
        "data_dir": "results/imagenet-mini/data",
        "datasets": {"imagenet": {
            "source": {"path": str(imagenet), "train_images": len(WNIDS) * TRAIN_PER_CLASS,
                       "val_images": len(WNIDS) * VAL_PER_CLASS, "eval_ids": str(eval_ids)},
            "num_classes": len(WNIDS), "image_size": 32, "epoch_reference_size": len(WNIDS) * TRAIN_PER_CLASS,
            "eval_n": len(WNIDS),
            "synthetic": {"tiny": {"generate": {"images_per_class": 2, "num_steps": 4, "parts": 2}}},
        }},
        "diffusion_models": {"lightningdit-xl": {
            # the DiT's checksum is checked, the tokenizer's is recorded (sha256: null), as for the real files
            "source": {"url": f"{base_url}/dit.pt", "hf": None, "sha256": digests["dit.pt"],
                       "tokenizer": download("vae.pt", checked=False), "latent_stats": download("latents_stats.pt"),
                       "dit_config": TINY_DIT, "vae_config": TINY_VAE},
            "feature": {"layer": 2, "t": 0.8, "zero_channels": [3, 7]},
        }},
        "archs": {"convnext-b": {"kwargs": TINY_CONVNEXT, "pretrained": from_hub("convnext-b")},
                  "vit-b-16": {"kwargs": TINY_VIT, "pretrained": from_hub("vit-b-16")}},
        "dra": {"head_hidden": 64},
        "recipes": {"imagenet": {"convnext-b": recipe, "vit-b-16": recipe}},
        "tables": {"table1": {"title": "Table 1 (mini ImageNet)",
                              "rows": [{"cell": cell, "paper": None} for cell in CELLS]}},
        # Figure 6 (SAE reconstruction of ImageNet representations) on the trained cells
        # (config.yaml's Figure 1 stays configured: its CKNNA needs fewer neighbours than eval_n points)
        "figures": {"eval_n": len(WNIDS), "cknna_topk": 5, "figure6_models": CELLS,
                    "figure6_sae": {"latents_per_dim": 2, "steps": 50, "batch_size": 8, "lr": 1.0e-3}},
        "resources": {kind: {"gpu": 0, "runtime": "30m", "mem_mb": 4000, "cpus": 1}
                      for kind in ("train", "evaluate", "diffusion")},
    }


@pytest.fixture(scope="module")
def run(server, tmp_path_factory):
    base_url, digests, hub = server
    # a folder name with a space reaches prepare_imagenet as one argument
    imagenet = tmp_path_factory.mktemp("ILSVRC 2012")
    eval_ids = write_imagenet_folder(imagenet)
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    (workdir / "imagenet-mini.yaml").write_text(yaml.safe_dump(overlay(base_url, digests, imagenet, eval_ids)))
    result = run_snakemake(workdir, "results/imagenet-mini/tables/table1.md",
                           "results/imagenet-mini/figures/figure6.csv", "--cores", "2",
                           "--configfile", "imagenet-mini.yaml", timeout=1800,
                           env={**os.environ, **hub.environment(workdir)})
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return workdir, result, digests


def test_every_imagenet_rule_ran(run):
    _, result, _ = run
    for rule in ("download_pretrained", "fetch_lightningdit", "prepare_imagenet", "prepare_imagenet_test",
                 "generate_imagenet_synthetic_part", "assemble_imagenet_synthetic", "extract_imagenet_features",
                 "train_cell", "autoattack", "build_table", "figure_representation", "figure6"):
        assert f"rule {rule}:" in result.stderr + result.stdout, rule


def test_downloads_are_verified_or_recorded(run):
    workdir, _, digests = run
    data = workdir / "results/imagenet-mini/data"
    for path, name in (("pretrained/convnext-b/model.safetensors", "convnext.safetensors"),
                       ("pretrained/vit-b-16/model.safetensors", "vit.safetensors"),
                       ("diffusion/lightningdit-xl/dit.pt", "dit.pt"),
                       ("diffusion/lightningdit-xl/vae.pt", "vae.pt")):
        assert hashlib.sha256((data / path).read_bytes()).hexdigest() == digests[name], path
    # every first download is pinned in the workflow's lock file: the Hub files at the commit main
    # resolved to, the plain URLs with their size and sha256
    lock = yaml.safe_load((workdir / "config/data/downloads.lock.yaml").read_text())
    for arch, file in PRETRAINED_FILES.items():
        assert lock[f"hf://model/{PRETRAINED_REPOS[arch]}/model.safetensors"] == {
            "revision": COMMIT_1, "size": (data / f"pretrained/{arch}/model.safetensors").stat().st_size,
            "sha256": digests[file]}
    assert sum(entry["revision"] is None for entry in lock.values()) == 3  # dit, vae, latents_stats
    # no published checksum: the download log records the hash it saw
    assert digests["vae.pt"] in (data / "diffusion/lightningdit-xl/vae.fetch.log").read_text()


def test_synthetic_set_is_two_jobs_joined_class_major(run):
    workdir, _, _ = run
    store = open_image_store(workdir / "results/imagenet-mini/data/imagenet/generated/tiny")
    # 2 images per class x 10 classes at the VA-VAE's 32 px, rows [0, 10) and [10, 20) from the two jobs
    assert isinstance(store.images, PartedRows) and store.meta["parts"] == ["part0000", "part0001"]
    assert store.images.shape == (20, 32, 32, 3)
    assert store.labels.tolist() == [label for label in range(10) for _ in range(2)]
    assert [open_image_store(store.path / part).meta["rows"] for part in store.meta["parts"]] == [[0, 10], [10, 20]]
    assert store.images[np.arange(20)].std() > 1  # decoded images, not a constant
    # the joined store links the parts' files: the same inodes, no second copy of the pixels
    for index, part in enumerate(store.meta["parts"]):
        sampled = workdir / f"results/imagenet-mini/data/imagenet/generated-parts/tiny/part{index}/images.npy"
        assert (store.path / part / "images.npy").stat().st_ino == sampled.stat().st_ino


def test_features_cover_every_training_and_synthetic_image(run):
    workdir, _, _ = run
    folder = workdir / "results/imagenet-mini/imagenet/features/lightningdit-xl"
    real, synthetic = open_feature_store(folder / "train-v1"), open_feature_store(folder / "synthetic-tiny-v1")
    assert real.features.shape == (30, 1, 32) and synthetic.features.shape == (20, 1, 32)
    for store in (real, synthetic):
        assert (store.meta["layer"], store.meta["t"], store.meta["zero_channels"]) == (2, 0.8, [3, 7])
        assert np.isfinite(np.asarray(store.features, dtype=np.float32)).all()
    assert real.meta["source"].endswith("index:train")
    # different images, different representations
    assert np.abs(np.diff(np.asarray(real.features, dtype=np.float32), axis=0)).max() > 1e-3


def test_evaluation_store_is_the_id_list_at_the_crop_size(run):
    workdir, _, _ = run
    store = open_image_store(workdir / "results/imagenet-mini/data/imagenet/test")
    assert store.images.shape == (10, 32, 32, 3) and store.labels.tolist() == list(range(10))
    assert store.meta["transform"] == "Resize(37) + CenterCrop(32)"


def test_cells_train_from_the_pretrained_weights_and_are_attacked(run):
    workdir, _, _ = run
    results = workdir / "results/imagenet-mini"
    for cell in CELLS:
        log = (results / cell / "train/log.csv").read_text().splitlines()
        assert len(log) == 2  # header and one epoch
        report = json.loads((results / cell / "autoattack.json").read_text())
        assert report["n"] == 10 and report["eps_255"] == "4/255"
        assert 0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 100
    recipe = yaml.safe_load((results / CELLS[1] / "recipe.yaml").read_text())
    assert recipe["arch"]["weights"] == "results/imagenet-mini/data/pretrained/convnext-b/model.safetensors"
    assert recipe["dra"]["features"]["synthetic"].endswith("features/lightningdit-xl/synthetic-tiny-v1")
    table = (results / "tables/table1.csv").read_text()
    assert all(cell.split("/")[1] in table for cell in CELLS) and "pending" not in table
    assert table.count("imagenet,") == 3


def test_figure6_reads_the_imagenet_cells(run):
    workdir, _, _ = run
    import csv

    with open(workdir / "results/imagenet-mini/figures/figure6.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["model"] for row in rows} == set(CELLS)
    assert sorted({int(row["k"]) for row in rows}) == [8, 16, 32]
    assert all(float(row["normalized_mse"]) >= 0 for row in rows)
