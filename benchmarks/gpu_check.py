"""The one prepared check for the day a GPU is at hand: everything the paper run asks of a GPU, once.

On one GPU, in about 10 minutes (the check's own budgets below):
1. one canary cell of each architecture family (dra.canary.canary_cell: the paper's recipe at the
   GPU plan's micro-batch, a few steps, a state save and one validation chunk) on random stand-ins
   of its data, DRA targets and diffusion weights;
2. the WRN-28-10 TRADES-10 images/s of benchmarks/gpu_train_step.py in fp32, TF32, bf16,
   bf16 + channels_last and bf16 + channels_last + torch.compile;
3. one AutoAttack chunk (the config's evaluation.attacks) on the WRN cell's trained canary model;
4. one sampling step of each diffusion model: EDM DDPM++ (Heun) and LightningDiT-XL/1 (Euler with
   the config's guidance), randomly initialised at the release's sizes;
then writes the canary cells' rows of the per-image memory table (config/data/memory_per_image.csv's
columns, dra.gpu_plan.TABLE_COLUMNS) to --out and prints a report. Whoever is lent a GPU runs it
first and commits the rows (scripts/canary_table.py --write-memory-table does the same from a full canary).

    python benchmarks/gpu_check.py --out results/gpu_check/memory_per_image.csv
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check/rows.csv   # small stand-ins, a minute

With --device cpu every network is a small stand-in of its family (the same code paths, 2 images per
micro-batch, no torch.compile and no TF32, which a CPU does not have): a check that the script runs,
not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from snakemake.utils import update_config

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dra import config as cfg  # noqa: E402 (after the repository is put on sys.path)
from dra.canary import canary_cell, update_memory_table  # noqa: E402
from dra.gpu_plan import TABLE_COLUMNS  # noqa: E402

# one cell per family: the largest WRN, the ViT-B/2 whose validation did not fit, the EDM encoder
CELLS = {
    "wrn": "cifar10/wrn-70-16/dm-at/syn50m-bs1024-ep2000",
    "timm": "cifar10/vit-b-2/dm-at+dra/syn50m-bs1024-ep2000",
    "edm_encoder": "cifar10/edm-encoder/at/nosyn-bs128-ep200",
}
STEPS = 3                 # canary steps per cell: the first is not timed, the last saves the state
STAND_IN_IMAGES = 64      # random training (and synthetic) images beyond the validation ones
SAMPLING_BATCH = {"edm": 512, "lightningdit": 64}   # this check's choice: images per sampling step
# the CPU's small stand-ins: the same families and code paths at a few thousand parameters
SMALL_ARCHS = {
    "wrn": {"family": "wrn", "depth": 10, "width": 1, "activation": "silu"},
    "timm": {"family": "timm", "name": "vit_tiny_patch16_224",
             "kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}},
}
SMALL_EDM = {"model_channels": 16, "channel_mult": [1, 1, 1], "num_blocks": 2, "attn_resolutions": [],
             "augment_dim": 0}
SMALL_DIT = {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 32, "depth": 2, "num_heads": 2,
             "num_classes": 10}
SMALL_VAE = {"embed_dim": 4, "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
             "resolution": 32}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device: torch.device, into: dict):
    """Seconds and peak GPU memory (MiB; None on the CPU) of the block, into `into`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    yield
    synchronize(device)
    into["seconds"] = time.perf_counter() - started
    into["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def write_random_store(path: Path, n: int, size: int, num_classes: int, seed: int) -> None:
    from dra.data.store import ImageStoreWriter

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    with ImageStoreWriter(path, n, size, size, num_classes, meta={"source": "gpu_check random stand-in"}) as writer:
        writer.write(0, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels)


def write_random_features(path: Path, rows: int, views: int, dim: int, image_store: Path, seed: int) -> None:
    from dra.data.store import FeatureStoreWriter

    features = np.random.default_rng(seed).standard_normal((rows, views, dim)).astype(np.float16)
    meta = {"layer": "random", "sigma": 0.1, "extra_view": views > 1, "diffusion_model": "gpu_check random stand-in",
            "image_store": str(image_store)}
    with FeatureStoreWriter(path, rows, views, dim, meta=meta) as writer:
        writer.write(0, features)


def stand_in_recipe(config: dict, cell_id: str, family: str, work: Path, edm: dict, small: bool) -> dict:
    """The cell's resolved recipe on random stand-ins: its image stores (the CIFAR format), DRA
    feature stores of the target's dimension, and the random EDM where the cell reads one."""
    from dra.diffusion.checkpoint import load_edm
    from dra.diffusion.features import DiffusionFeatureExtractor

    recipe = cfg.resolve_recipe(config, cfg.parse_cell(cell_id))
    data = recipe["data"]
    folder = work / "data" / family
    write_random_store(folder / "train", data["val_size"] + STAND_IN_IMAGES, data["image_size"], data["num_classes"], 1)
    data.update(train=str(folder / "train"), format="image_store")
    if data["synthetic"]:
        write_random_store(folder / "synthetic", STAND_IN_IMAGES, data["image_size"], data["num_classes"], 2)
        data["synthetic"] = str(folder / "synthetic")
    if small and family in SMALL_ARCHS:
        recipe["arch"] = copy.deepcopy(SMALL_ARCHS[family])
    if recipe["arch"]["family"] == "edm_encoder":
        recipe["arch"].update(weights=edm["weights"], network=edm["network"])
    if recipe["dra"] is not None:
        dra = recipe["dra"]
        views = 2 if dra["diffusion"]["extra_view"] else 1
        dim = DiffusionFeatureExtractor(load_edm(edm["weights"], edm["network"]), dra["diffusion"]["layer"],
                                        dra["diffusion"]["sigma"]).dims[dra["diffusion"]["layer"]]
        write_random_features(folder / "features_train", data["val_size"] + STAND_IN_IMAGES, views, dim,
                              folder / "train", 3)
        dra["features"]["real"] = str(folder / "features_train")
        if data["synthetic"]:
            write_random_features(folder / "features_synthetic", STAND_IN_IMAGES, views, dim, folder / "synthetic", 4)
            dra["features"]["synthetic"] = str(folder / "features_synthetic")
        dra["diffusion"]["checkpoint"] = edm["weights"]
    return recipe


def run_canary_cells(config: dict, work: Path, edm: dict, small: bool, threads: int) -> tuple[list[dict], dict]:
    """The canary rows of the cells, and their stand-in recipes by family."""
    rows, recipes = [], {}
    for family, cell_id in CELLS.items():
        cell = cfg.parse_cell(cell_id)
        plan = cfg.train_plan(config, cell)
        micro_batch = 2 if small else plan.micro_batch
        recipe = recipes[family] = stand_in_recipe(config, cell_id, family, work, edm, small)
        gib = plan.bytes_per_gpu / 2**30 if plan.bytes_per_gpu is not None else None
        planned = {"planned_gpus": plan.gpus, "planned_accumulation": plan.accumulation_steps,
                   "planned_gib_per_gpu": gib}
        print(f"[canary] {cell_id}: {STEPS} steps of {micro_batch} images, a state save, one validation chunk",
              flush=True)
        row = canary_cell(recipe, work / "canary" / family, work / "canary" / f"{family}.json", micro_batch, STEPS,
                          threads, planned)
        row["family"] = family
        if small:  # a stand-in's measurements must never pass for the paper architecture's
            row["arch"] = f"{row['arch']}-cpu-stand-in"
        rows.append(row)
    return rows, recipes


def run_throughput(device: torch.device, small: bool) -> tuple[str, dict[str, float]]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_train_step import VARIANTS, measure

    # a CPU has no TF32, and torch.compile there takes minutes of C++ compilation
    variants = [name for name, (_, _, compiled, tf32) in VARIANTS.items() if not (small and (compiled or tf32))]
    depth, width, batch, steps, warmup = (10, 1, 4, 1, 1) if small else (28, 10, 512, 5, 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as DM-AT (train-wa.py) and gpu_train_step.py
    rates = {}
    for name in variants:
        print(f"[images/s] WRN-{depth}-{width} TRADES-10, batch {batch}: {name}", flush=True)
        rates[name] = measure(device, depth, width, batch, steps, warmup, *VARIANTS[name])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return f"WRN-{depth}-{width} TRADES-10, batch {batch}", rates


def run_autoattack_chunk(config: dict, work: Path, recipe: dict, wrn_row: dict, device: torch.device) -> dict:
    """One chunk of the configured attacks on the WRN canary's EMA model and random test images."""
    from dra.evaluation.autoattack import evaluate_autoattack
    from dra.models import create_classifier

    data = recipe["data"]
    model = create_classifier(recipe["arch"], data["num_classes"], data["mean"], data["std"])
    weights = work / "canary" / "wrn" / "out" / "model.pt"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    n = wrn_row["micro_batch"]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, data["image_size"], data["image_size"], generator=generator)
    labels = torch.randint(0, data["num_classes"], (n,), generator=generator)
    report = {"images": n, "attacks": list(config["evaluation"]["attacks"])}
    with measured(device, report):
        result = evaluate_autoattack(model, images, labels, recipe["attack"]["eps"], 0, n, None, device, chunk_size=n,
                                     attacks=config["evaluation"]["attacks"])
    report["robust_accuracy"] = result.robust_accuracy
    return report


def run_sampling_steps(config: dict, work: Path, edm: dict, device: torch.device, small: bool) -> dict:
    from dra.diffusion.checkpoint import load_edm, save_random_lightningdit
    from dra.diffusion.lightningdit import load_lightningdit
    from dra.diffusion.lightningdit_sampler import euler_sample
    from dra.diffusion.sampler import edm_heun_sample

    reports = {}
    net = load_edm(edm["weights"], edm["network"]).to(device)
    batch = 2 if small else SAMPLING_BATCH["edm"]
    labels = torch.eye(net.label_dim, device=device)[torch.arange(batch, device=device) % net.label_dim]
    latents = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device)
    reports["edm"] = {"images": batch, "network_evaluations": 2}
    with measured(device, reports["edm"]), torch.no_grad():
        edm_heun_sample(net, latents, labels, num_steps=2)  # one Heun step: Euler plus its correction
    del net

    folder = work / "lightningdit"
    folder.mkdir(parents=True, exist_ok=True)
    save_random_lightningdit(folder / "dit.pt", folder / "vae.pt", folder / "latents_stats.pt", 6,
                             SMALL_DIT if small else None, SMALL_VAE if small else None)
    dit = load_lightningdit(folder / "dit.pt", SMALL_DIT if small else None).to(device).eval()
    sampling = config["diffusion_models"]["lightningdit-xl"]["sampling"]
    batch = 2 if small else SAMPLING_BATCH["lightningdit"]
    noise = torch.randn(batch, dit.in_channels, dit.input_size, dit.input_size, device=device)
    labels = torch.arange(batch, device=device) % dit.num_classes
    reports["lightningdit"] = {"images": batch, "network_evaluations": 2 if sampling["cfg_scale"] > 1 else 1}
    with measured(device, reports["lightningdit"]), torch.no_grad():
        # a grid of 2 times: one Euler step, from t = 0, inside the guidance interval (the batch runs twice)
        euler_sample(dit, noise, labels, 2, sampling["timestep_shift"], sampling["cfg_scale"], 0.0,
                     sampling["cfg_channels"], bf16=device.type == "cuda")
    return reports


def write_rows(rows: list[dict], out: Path, measured_note: str) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(",".join(TABLE_COLUMNS) + "\n")
    return update_memory_table(rows, out, measured_note)


def print_report(device_name: str, cells: list[dict], throughput: str, rates: dict, autoattack: dict, sampling: dict,
                 out: Path,
                 written: int, seconds: float) -> None:
    print(f"\nGPU check on {device_name}: {seconds:.0f} s in all")
    print(f"\n{'cell':<52}{'passed':>7}{'micro':>7}{'val':>5}{'s/step':>9}{'peak MiB':>10}{'saved MiB/img':>15}"
          f"{'planned GiB':>13}")
    for row in cells:
        planned = row.get("planned_gib_per_gpu")
        print(f"{row['cell']:<52}{row['passed']!s:>7}{row['micro_batch']:>7}{row['validated_images']!s:>5}"
              f"{row['step_seconds'] or float('nan'):>9.3f}{row['peak_memory_mib'] or float('nan'):>10.0f}"
              f"{row['saved_mib_per_image'] or float('nan'):>15.1f}"
              f"{planned if planned is not None else float('nan'):>13.1f}")
        if row["error"]:
            print(f"    error: {row['error']}")
    print(f"\n{throughput:<40}{'images/s':>12}{'vs fp32':>10}")
    for name, rate in rates.items():
        print(f"{name:<40}{rate:>12.1f}{rate / rates['fp32']:>9.2f}x")
    peak = autoattack["peak_memory_mib"]
    print(f"\nAutoAttack ({', '.join(autoattack['attacks'])}), one chunk of {autoattack['images']} images: "
          f"{autoattack['seconds']:.1f} s" + (f", peak {peak:.0f} MiB" if peak is not None else ""))
    for name, report in sampling.items():
        peak = report["peak_memory_mib"]
        print(f"{name} sampling step, {report['images']} images ({report['network_evaluations']} network "
              f"evaluations): {report['seconds']:.2f} s" + (f", peak {peak:.0f} MiB" if peak is not None else ""))
    print(f"\n{out}: {written} memory-table rows (dra.gpu_plan.TABLE_COLUMNS)"
          + ("; small stand-ins, not for config/data/memory_per_image.csv" if device_name == "cpu"
             else "; commit them into config/data/memory_per_image.csv"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", required=True, help="CSV of the measured memory-table rows")
    parser.add_argument("--work-dir", default=None, help="stand-ins and canary runs (default: beside --out)")
    parser.add_argument("--configfile", nargs="*", default=[],
                        help="overlays on config.yaml (hardware, for instance): the cells' GPU plan and attacks")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu for the small stand-ins")
    small = device.type == "cpu"
    torch.set_num_threads(args.threads)
    config = cfg.load_config_file(REPO / "config.yaml")
    for overlay in args.configfile:
        update_config(config, cfg.load_config_file(overlay))
    table = Path(config["hardware"]["memory_per_image"])
    config["hardware"]["memory_per_image"] = str(table if table.is_absolute() else REPO / table)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.parent / "gpu_check_work"

    from dra.diffusion.checkpoint import save_random_edm

    edm = {"weights": str(work / "edm" / "model.safetensors"), "network": str(work / "edm" / "model.json")}
    Path(edm["weights"]).parent.mkdir(parents=True, exist_ok=True)
    save_random_edm(edm["weights"], edm["network"], 4, SMALL_EDM if small else None)

    cells, recipes = run_canary_cells(config, work, edm, small, args.threads)
    throughput, rates = run_throughput(device, small)
    autoattack = run_autoattack_chunk(config, work, recipes["wrn"], next(r for r in cells if r["family"] == "wrn"),
                                      device)
    sampling = run_sampling_steps(config, work, edm, device, small)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    written = write_rows(cells, out, f"gpu_check {datetime.date.today().isoformat()}")
    (out.with_suffix(".json")).write_text(json.dumps({"device": name, "cells": cells, "throughput": throughput,
                                                      "images_per_second": rates,
                                                      "autoattack": autoattack, "sampling": sampling}, indent=1))
    print_report(name, cells, throughput, rates, autoattack, sampling, out, written, time.perf_counter() - started)
    return 0 if all(row["passed"] for row in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
