"""The canary: one paper cell for a few optimizer steps at its real shapes, before GPU-days.

`canary_cell(recipe, ...)` takes a cell's resolved recipe (the one train_cell would read) and
keeps everything that decides memory and time: the architecture, input size, precision,
objective with its attack, optimizer, DRA head and target dimension. It replaces only what a
smoke test cannot download:
- data: random images in the real formats and shapes (an image store at the dataset's size; for
  ImageNet a small ImageNet-layout JPEG folder indexed by dra.data.imagenet.index_imagenet, read
  by the same loader, and a synthetic store at 256x256);
- the diffusion networks behind the DRA targets, randomly initialised at the paper's
  configuration (EDM DDPM++ 55.7M parameters; LightningDiT-XL/1 with its VA-VAE f16d32), their
  features extracted by the project's own extractors (layer, sigma or t, views as configured);
- pretrained backbones (DINOv3) start from random weights; the EDM encoder from a random EDM.
Then train_cell runs `steps` steps of `micro_batch` images (one GPU's share of one micro-batch
in the planned job), one epoch without validation (its 40-step attack on held-out images is not
what the canary measures). Recorded: pass or fail, seconds per step (after the first), peak memory
(torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on the CPU, which includes the
interpreter and torch themselves) and the bytes saved for backward per image
(dra.training.memory), the figure the GPU plan (dra.gpu_plan) reads.
"""

from __future__ import annotations

import copy
import multiprocessing
import resource
import shutil
import statistics
import time
import traceback
from pathlib import Path
from queue import Empty

import numpy as np
import torch

from dra.io import write_json

IMAGENET_CLASSES = 2          # class folders of the canary's ImageNet-layout folder
SYNTHETIC_IMAGENET_SIZE = 256  # LightningDiT samples 256x256 images (the training crop is 224)


def random_image_store(path: Path, n: int, size: int, num_classes: int, seed: int) -> str:
    from dra.data.store import ImageStoreWriter

    rng = np.random.default_rng(seed)
    with ImageStoreWriter(path, n, size, size, num_classes, meta={"source": "canary: uniform random pixels"}) as writer:
        writer.write(0, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, num_classes, n))
    return str(path)


def random_imagenet_index(root: Path, index_dir: Path, n_train: int, seed: int) -> str:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG of random pixels at ImageNet-like sizes, indexed."""
    from PIL import Image

    from dra.data.imagenet import index_imagenet

    rng = np.random.default_rng(seed)
    wnids = [f"n{index:08d}" for index in range(IMAGENET_CLASSES)]
    for split, count in (("train", n_train), ("val", IMAGENET_CLASSES)):
        for index in range(count):
            folder = root / split / wnids[index % IMAGENET_CLASSES]
            folder.mkdir(parents=True, exist_ok=True)
            height, width = int(rng.integers(240, 400)), int(rng.integers(240, 500))
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{split}_{index:06d}.JPEG", quality=90)
    eval_ids = root / "eval_ids.txt"
    eval_ids.write_text("".join(f"{path.parent.name}/{path.name}\n" for path in sorted((root / "val").glob("*/*.JPEG"))))
    index_imagenet(root, index_dir, expected_train=n_train, expected_val=IMAGENET_CLASSES,
                   num_classes=IMAGENET_CLASSES, eval_ids=eval_ids)
    return str(index_dir)


def random_edm(folder: Path, num_classes: int, seed: int) -> str:
    """A randomly initialised EDM DDPM++ at the configuration of NVIDIA's CIFAR-10 model, saved as
    the converted checkpoints are (safetensors + json)."""
    from dra.diffusion.checkpoint import save_edm
    from dra.diffusion.edm import EDM_CIFAR10_DDPMPP, EDMPrecond

    kwargs = {**EDM_CIFAR10_DDPMPP, "label_dim": num_classes}
    torch.manual_seed(seed)
    net = EDMPrecond(**kwargs)
    save_edm(net, kwargs, folder / "model.safetensors", folder / "model.json")
    return str(folder / "model.safetensors")


def edm_features(checkpoint: str, images: str, out: Path, diffusion: dict, views: int) -> str:
    from dra.diffusion.checkpoint import load_edm
    from dra.diffusion.features import extract_feature_store

    net = load_edm(checkpoint)
    extract_feature_store(net, images, out, diffusion["layer"], diffusion["sigma"], views=views, batch_size=16,
                          diffusion_model="canary: random EDM DDPM++")
    return str(out)


def lightningdit_features(stores: dict[str, tuple[str, str]], folder: Path, layer: int) -> dict[str, str]:
    """Features of each (kind, path) in `stores` (kind: 'index' or 'store') by a randomly initialised
    LightningDiT-XL/1 and VA-VAE f16d32, the release's sizes."""
    from dra.data.imagenet_loader import ImageNetIndexDataset, ImageStoreDataset, imagenet_transform
    from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, LightningDiT
    from dra.diffusion.lightningdit_features import LightningDiTFeatureExtractor, extract_lightningdit_feature_store
    from dra.diffusion.vavae import VAVAE, VAVAE_F16D32, LatentStats

    # on the GPU where there is one: the planned micro-batches make thousands of images to encode
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    dit, vae = LightningDiT(**LIGHTNINGDIT_XL_1).eval().to(device), VAVAE(**VAVAE_F16D32).eval().to(device)
    stats = LatentStats(torch.zeros(1, vae.embed_dim, 1, 1), torch.ones(1, vae.embed_dim, 1, 1))
    extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer=layer)
    out = {}
    for name, (kind, path) in stores.items():
        dataset = (ImageNetIndexDataset(path, "train", imagenet_transform("adm256")) if kind == "index"
                   else ImageStoreDataset(path))
        out[name] = str(extract_lightningdit_feature_store(extractor, dataset, folder / name, source=path,
                                                           diffusion_model="canary: random LightningDiT-XL/1",
                                                           batch_size=4, num_workers=0, device=device))
    return out


def canary_recipe(recipe: dict, work: Path, micro_batch: int, steps: int) -> dict:
    """The recipe with random data and random diffusion networks in place of the downloads."""
    recipe = copy.deepcopy(recipe)
    data = recipe["data"]
    imagenet = data["format"] == "imagenet_index"
    real = steps * micro_batch
    # no validation: its 40-step attack on held-out images would cost more than the steps measured
    data.update(val_size=0, epoch_reference_size=real)
    recipe.update(batch_size=micro_batch, epochs=1, accumulation_steps=1)
    recipe["checkpoint"].update(every_steps=steps + 1, select="last")  # one state at the end of the epoch
    if imagenet:
        data["train"] = random_imagenet_index(work / "imagenet", work / "imagenet-index", real, seed=1)
    else:
        data["train"] = random_image_store(work / "train", real, data["image_size"], data["num_classes"], seed=1)
    if data["synthetic"]:
        size = SYNTHETIC_IMAGENET_SIZE if imagenet else data["image_size"]
        data["synthetic"] = random_image_store(work / "synthetic", real, size, min(data["num_classes"], 10), seed=2)
    arch = recipe["arch"]
    if arch.get("pretrained"):
        arch.pop("pretrained"), arch.pop("weights")
    if arch["family"] == "edm_encoder":
        arch["weights"] = random_edm(work / "encoder", 10, seed=3)
        arch["network"] = str(Path(arch["weights"]).with_suffix(".json"))
    dra = recipe["dra"]
    if dra is not None:
        views = 2 if dra["diffusion"]["extra_view"] else 1
        if imagenet:
            stores = {"real": ("index", data["train"])}
            if data["synthetic"]:
                stores["synthetic"] = ("store", data["synthetic"])
            dra["features"].update(lightningdit_features(stores, work / "features", int(dra["diffusion"]["layer"])))
        else:
            checkpoint = random_edm(work / "diffusion", data["num_classes"], seed=4)
            dra["diffusion"]["checkpoint"] = checkpoint
            if dra["target"] == "stored":
                dra["features"]["real"] = edm_features(checkpoint, data["train"], work / "features-real", dra["diffusion"], views)
                if data["synthetic"]:
                    dra["features"]["synthetic"] = edm_features(checkpoint, data["synthetic"], work / "features-synthetic",
                                                                dra["diffusion"], views)
    return recipe


def _prepare(recipe: dict, work: Path, micro_batch: int, steps: int, threads: int, queue) -> None:
    try:
        torch.set_num_threads(threads)
        queue.put(("ok", canary_recipe(recipe, work, micro_batch, steps)))
    except Exception:  # reported by the parent as the cell's failure
        queue.put(("error", traceback.format_exc()))


def saved_mib_per_image(recipe: dict, device: torch.device) -> tuple[float, int]:
    """Bytes saved for backward per image by one graph of the classifier and DRA head, and their parameters."""
    from dra.data.store import open_feature_store
    from dra.models import create_classifier
    from dra.training.dra_head import ProjectionHead
    from dra.training.memory import saved_bytes_per_image

    data, precision = recipe["data"], recipe["precision"]
    model = create_classifier(recipe["arch"], data["num_classes"], data["mean"], data["std"]).to(device)
    head = None
    if recipe["dra"] is not None:
        target_dim = open_feature_store(recipe["dra"]["features"]["real"]).features.shape[-1]
        head = ProjectionHead(model.feature_dim, recipe["dra"]["head_hidden"], target_dim,
                              recipe["dra"]["head_layers"]).to(device)
    if precision["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    per_image = saved_bytes_per_image(model, head, data["image_size"], precision["bf16"], precision["channels_last"],
                                      device)
    parameters = sum(p.numel() for p in model.parameters()) + (sum(p.numel() for p in head.parameters()) if head else 0)
    return per_image / 2**20, parameters


def canary_cell(recipe: dict, work: str | Path, out_json: str | Path, micro_batch: int, steps: int,
                threads: int, planned: dict | None = None) -> dict:
    """Run the cell for `steps` steps of `micro_batch` images; write and return its measurements
    (with `planned`: the GPU plan's gpus, accumulation and GiB per GPU, for the table)."""
    from dra.training import train_cell

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)  # a rerun measures afresh instead of resuming a finished run
    work.mkdir(parents=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cell = recipe["cell"]
    row = {"cell": f"{cell['dataset']}/{cell['arch']}/{cell['method']}/{cell['budget']}", "arch": cell["arch"],
           "image_size": recipe["data"]["image_size"], "precision": "bf16" if recipe["precision"]["bf16"] else "fp32",
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "micro_batch": micro_batch,
           "steps": steps, "passed": False, "step_seconds": None, "peak_memory_mib": None,
           "saved_mib_per_image": None, "parameters": None, "error": "", **(planned or {})}
    # random data and diffusion features in a child process: its memory is not the training's
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_prepare, args=(recipe, work / "data", micro_batch, steps, threads, queue))
    child.start()
    while True:
        try:
            status, result = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive():
                status, result = "error", f"the data preparation process exited with code {child.exitcode}"
                break
    child.join()
    if status != "ok":
        row["error"] = result.strip().splitlines()[-1]
        write_json(out_json, row)
        return row
    prepared = result
    stamps = []
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        train_cell(prepared, work / "out", work / "state", threads, after_step=lambda _step: stamps.append(time.perf_counter()))
        if device.type == "cuda":
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            row["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        times = np.diff([started] + stamps)
        row["step_seconds"] = float(statistics.median(times[1:] if len(times) > 1 else times))
        row["saved_mib_per_image"], row["parameters"] = saved_mib_per_image(prepared, device)
        row["passed"] = True
    except Exception as error:  # a cell that fails is a row of the table, not a stopped canary
        row["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        traceback.print_exc()
    write_json(out_json, row)
    return row


TABLE_COLUMNS = ["cell", "passed", "device", "micro_batch", "steps", "step_seconds", "peak_memory_mib",
                 "saved_mib_per_image", "parameters", "planned_gpus", "planned_accumulation", "planned_gib_per_gpu",
                 "error"]


def write_canary_table(rows: list[dict], out_csv: str | Path, out_md: str | Path) -> None:
    """One row per cell, as CSV and Markdown."""
    import pandas as pd

    from dra.io import atomic_file

    frame = pd.DataFrame([{column: row.get(column) for column in TABLE_COLUMNS} for row in rows], columns=TABLE_COLUMNS)
    with atomic_file(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_file(out_md) as tmp:
        tmp.write_text(frame.to_markdown(index=False, floatfmt="g") + "\n")


def update_memory_table(rows: list[dict], path: str | Path, measured: str) -> int:
    """Rewrite the GPU plan's per-image table (dra.gpu_plan) with the passed cells' measurements:
    per (arch, image size, precision) the largest saved bytes per image and parameter count, and,
    from a GPU run, seconds per image (step time over the micro-batch). Returns the rows replaced."""
    import csv

    from dra.gpu_plan import TABLE_COLUMNS as MEMORY_COLUMNS
    from dra.io import atomic_file

    path = Path(path)
    with path.open() as handle:
        table = {(r["arch"], r["image_size"], r["precision"]): r for r in csv.DictReader(handle)}
    fresh: dict[tuple, dict] = {}
    for row in rows:
        if not row["passed"]:
            continue
        key = (row["arch"], str(row["image_size"]), row["precision"])
        seconds = row["step_seconds"] / row["micro_batch"] if row["device"] != "cpu" else None
        old = fresh.get(key)
        if old is None or row["saved_mib_per_image"] > float(old["saved_mib_per_image"]):
            fresh[key] = {"arch": key[0], "image_size": key[1], "precision": key[2],
                          "saved_mib_per_image": f"{row['saved_mib_per_image']:.1f}", "parameters": row["parameters"],
                          "gpu_seconds_per_image": f"{seconds:.6g}" if seconds is not None else "",
                          "measured": f"{row['device']} {measured}"}
    table.update(fresh)
    with atomic_file(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MEMORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table.values())
    return len(fresh)
