"""What the paper run costs in GPU-hours on a GPU type: per cell, per table and in total, as a range.

    python benchmarks/gpu_hours.py --gpu a100-80gb
    python benchmarks/gpu_hours.py --gpu h100-sxm --efficiency 0.2 0.5
    python benchmarks/gpu_hours.py --gpu h100-sxm --configfile config/short.yaml

Counted: training of every cell, AutoAttack of every cell and reference checkpoint, sampling the
synthetic sets that are sampled here (LightningDiT-XL, ImageNet; DM-AT's CIFAR sets are downloaded),
and the feature extraction of the DRA targets. Each is FLOPs (torch's FlopCounterMode on the meta
device: nothing is computed) divided by the GPU's dense peak in the precision the job's math runs
in, times an efficiency: the fraction of that peak a job sustains, a range (--efficiency, default
0.20 to 0.50; README "What each budget costs" says why). A cell whose GPU seconds per image a GPU
canary measured (the memory table's gpu_seconds_per_image) takes its training time from that
measurement, one number (source: canary).

Method. Training: a cell trains ceil(epoch_reference_size / batch) * epochs steps of `batch` images
(DM-AT's epoch length, core/data/semisup.py); a TRADES-k image costs k attack forward+backward
passes, one forward of p_nat and two forward+backward passes of the outer loss (PGD-AT: no clean
pass); a backward pass counts as two forwards. AutoAttack: forward and backward passes per image
counted on a real run (benchmarks/autoattack_passes.py): a robust point costs the whole budget of
the four attacks, a broken one what the count found, a wrong one a clean pass; the cell's share of
each is the paper's clean and AutoAttack accuracy (its table row). Precision: bf16 recipes run at
the bf16 peak; fp32 convolutions run at the TF32 peak (PyTorch's default, cudnn.allow_tf32 True)
and fp32 matrix products at the FP32 peak (cuda.matmul.allow_tf32 False), so a convolutional
network in fp32 is counted at TF32 and a transformer at FP32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from snakemake.utils import update_config
from torch.utils.flop_counter import FlopCounterMode

from dra.config import (
    dra_target_model,
    feature_views,
    figure_cells,
    resolve_arch,
    split_sizes,
    synthetic_size,
    table_cells,
    train_plan,
    training_steps,
    uses_edm,
)
from dra.gpu_plan import precision_name, read_memory_table
from dra.models import create_classifier

ROOT = Path(__file__).resolve().parent.parent

# Dense peak TFLOP/s (without 2:4 sparsity: the datasheets print the sparse figure, marked *, and
# state that dense is half of it) per precision.
GPU_TYPES = {
    # NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf),
    # SXM: FP32 19.5, TF32 156 (312*), BF16 312 (624*); the 40 GB and 80 GB parts differ in memory only
    "a100-40gb": {"memory_gib": 40, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "source": "NVIDIA A100 datasheet"},
    "a100-80gb": {"memory_gib": 80, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "source": "NVIDIA A100 datasheet"},
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: FP32 67, TF32 989*, BF16 1,979*
    "h100-sxm": {"memory_gib": 80, "fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "source": "NVIDIA H100 datasheet"},
    # NVIDIA H200 datasheet, H200 SXM: the H100's compute (FP32 67, TF32 989*, BF16 1,979*), 141 GB
    "h200": {"memory_gib": 141, "fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "source": "NVIDIA H200 datasheet"},
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366*), BF16 362.05 (733*)
    "l40s": {"memory_gib": 48, "fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "source": "NVIDIA L40S datasheet"},
}
EFFICIENCY = (0.20, 0.50)
# Forward and backward passes per image of AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square;
# pyautoattack 0.2.0), counted by benchmarks/autoattack_passes.py (n 40, seed 0): 31 robust points
# 7866.0 forward and 1910.0 backward each, 7 broken points 127.9 and 115.4, 2 wrong points 10.0 and 0
AUTOATTACK_PASSES = {"robust": (7866.0, 1910.0), "broken": (127.9, 115.4), "wrong": (10.0, 0.0)}
# DRA's LightningDiT feature stops at the middle block (layer 14 of the XL's 28): half its blocks
LIGHTNINGDIT_FEATURE_FRACTION = 0.5
CONVOLUTIONAL = {"wrn", "edm_encoder"}
# (clean, AutoAttack) accuracy of a cell whose row states none (the figures' cells): assumed, about
# the paper's CIFAR rows for an adversarially trained cell; a standard-trained one breaks everywhere
UNREPORTED = {False: (0.9, 0.6), True: (0.95, 0.0)}


def count_flops(run) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return float(counter.get_total_flops())


def forward_flops(arch: dict, num_classes: int, image_size: int) -> float:
    with torch.device("meta"):
        model = create_classifier(arch, num_classes, [0.5] * 3, [0.5] * 3)
        images = torch.zeros(1, 3, image_size, image_size)
    return count_flops(lambda: model(images))


def passes_per_image(objective: str, attack_steps: int) -> float:
    """Forward-pass equivalents per training image (backward = 2 forwards)."""
    if objective == "standard":
        return 3.0
    if objective == "pgd_at":
        return 3.0 * attack_steps + 3.0
    return 3.0 * attack_steps + 1.0 + 2 * 3.0  # TRADES: attack, p_nat, clean and adversarial outer passes


def autoattack_passes(clean: float, robust: float) -> float:
    """Forward-pass equivalents per evaluated image, for clean and robust accuracy in [0, 1]."""
    cost = {kind: forward + 2 * backward for kind, (forward, backward) in AUTOATTACK_PASSES.items()}
    return robust * cost["robust"] + (clean - robust) * cost["broken"] + (1 - clean) * cost["wrong"]


def math_precision(config: dict, arch_name: str, bf16: bool) -> str:
    if bf16:
        return "bf16"
    return "tf32" if config["archs"][arch_name]["family"] in CONVOLUTIONAL else "fp32"


def paper_accuracy(config: dict) -> dict[str, tuple[float, float]]:
    """{cell: (clean, robust)} in [0, 1] from the tables' paper numbers, where a row states them."""
    out = {}
    for table in config["tables"].values():
        for row in table["rows"]:
            paper = row.get("paper") or {}
            if "cell" in row and paper.get("autoattack") is not None:
                clean = paper.get("clean") if paper.get("clean") is not None else paper["autoattack"]
                out[row["cell"]] = (clean / 100, paper["autoattack"] / 100)
    return out


def arch_for_flops(config: dict, arch_name: str) -> dict:
    arch = resolve_arch(config, arch_name, config["seed"])
    # FLOPs need the architecture only, not its (pretrained or encoder) weights
    arch.pop("weights", None)
    arch.pop("pretrained", None)
    return arch


class Costs:
    def __init__(self, gpu: dict, efficiency: tuple[float, float]):
        self.gpu, self.efficiency = gpu, efficiency

    def hours(self, flops: float, precision: str) -> tuple[float, float]:
        peak = self.gpu[precision] * 1e12
        return flops / (peak * self.efficiency[1]) / 3600, flops / (peak * self.efficiency[0]) / 3600


def edm_forward_flops(layer: str | None, label_dim: int) -> float:
    from dra.diffusion.edm import EDMPrecond
    from dra.network_presets import EDM_CIFAR10_DDPMPP
    from dra.models.edm_encoder import EDMEncoder

    with torch.device("meta"):
        net = EDMPrecond(**{**EDM_CIFAR10_DDPMPP, "label_dim": label_dim})
        images = torch.zeros(1, 3, 32, 32)
        if layer is None:
            return count_flops(lambda: net(images, torch.ones(1), None))
        encoder = EDMEncoder(net, layer)
        return count_flops(lambda: encoder(images, 0.1))


def lightningdit_flops(source: dict) -> dict[str, float]:
    from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, LightningDiT
    from dra.diffusion.vavae import VAVAE, VAVAE_F16D32

    with torch.device("meta"):
        dit = LightningDiT(**source.get("dit_config", LIGHTNINGDIT_XL_1))
        vae = VAVAE(**source.get("vae_config", VAVAE_F16D32))
        latents = torch.zeros(1, dit.in_channels, dit.input_size, dit.input_size)
        images = torch.zeros(1, 3, vae.resolution, vae.resolution)
        labels = torch.zeros(1, dtype=torch.long)
        times = torch.zeros(1)
    return {"dit": count_flops(lambda: dit(latents, times, labels)),
            "decode": count_flops(lambda: vae.decode(latents[:, :vae.embed_dim])),
            "encode": count_flops(lambda: vae.encode_moments(images))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", required=True, choices=sorted(GPU_TYPES), help="the GPU type (datasheet peaks)")
    parser.add_argument("--efficiency", type=float, nargs=2, default=EFFICIENCY, metavar=("LOW", "HIGH"),
                        help="fraction of the dense peak a job sustains (default 0.20 0.50)")
    parser.add_argument("--configfile", default=None, help="overlay on config.yaml (e.g. config/short.yaml)")
    args = parser.parse_args(argv)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if args.configfile:
        update_config(config, yaml.safe_load(Path(args.configfile).read_text()))
    gpu = GPU_TYPES[args.gpu]
    costs = Costs(gpu, tuple(sorted(args.efficiency)))
    memory_table = read_memory_table(ROOT / config["hardware"]["memory_per_image"])
    accuracy = paper_accuracy(config)
    print(f"{args.gpu}: dense peak FP32 {gpu['fp32']}, TF32 {gpu['tf32']}, BF16 {gpu['bf16']} TFLOP/s "
          f"({gpu['source']}); efficiency {costs.efficiency[0]:.2f} to {costs.efficiency[1]:.2f} of peak")
    print(f"{'cell':<52}{'Mimages':>8}{'PFLOP':>8}{'math':>6}{'GPUs':>5}{'train GPU-h':>14}{'AA GPU-h':>11}  source")
    flops_cache: dict[tuple, float] = {}
    per_cell: dict[str, tuple[float, float]] = {}
    in_tables = {cell.id for cell in table_cells(config)}
    figure_only = [cell for cell in figure_cells(config) if cell.id not in in_tables]
    for cell in table_cells(config) + figure_only:
        dataset = config["datasets"][cell.dataset]
        recipe = config["recipes"][cell.dataset][cell.arch]
        steps = training_steps(config, cell)
        images = steps * cell.batch_size
        key = (cell.arch, cell.dataset)
        if key not in flops_cache:
            arch = arch_for_flops(config, cell.arch)
            if arch["family"] == "edm_encoder":  # the EDM up to the DRA layer and a linear head
                from dra.config import diffusion_feature

                diffusion = config["archs"][cell.arch]["diffusion"]
                flops_cache[key] = edm_forward_flops(diffusion_feature(config, diffusion)["layer"],
                                                     dataset["num_classes"])
            else:
                flops_cache[key] = forward_flops(arch, dataset["num_classes"], dataset["image_size"])
        flops = flops_cache[key]
        objective = config["methods"][cell.method]["objective"]
        train_flops = images * flops * passes_per_image(objective, recipe["attack"]["steps"])
        precision = math_precision(config, cell.arch, recipe["precision"]["bf16"])
        row = memory_table.get((cell.arch, dataset["image_size"], precision_name(recipe["precision"])))
        if row is not None and row.gpu_seconds_per_image is not None:
            # every GPU of the job spends its images' measured seconds: GPU-hours = images x seconds per image
            train = (images * row.gpu_seconds_per_image / 3600,) * 2
            source = "canary"
        else:
            train, source = costs.hours(train_flops, precision), "FLOPs"
        clean, robust = accuracy.get(cell.id.split("-seed")[0], UNREPORTED[objective == "standard"])
        attack = costs.hours(dataset["eval_n"] * flops * autoattack_passes(clean, robust),
                             math_precision(config, cell.arch, False))
        per_cell[cell.id] = (train[0] + attack[0], train[1] + attack[1])
        gpus = train_plan(config, cell).gpus
        print(f"{cell.id:<52}{images / 1e6:>8.1f}{train_flops / 1e15:>8.0f}{precision:>6}{gpus:>5}"
              f"{train[0]:>7.0f}-{train[1]:<6.0f}{attack[0]:>5.0f}-{attack[1]:<5.0f}  {source}")

    print(f"\n{'table':<52}{'cells':>6}{'GPU-hours (training and AutoAttack)':>38}")
    for table in config["tables"]:
        ids = [cell.id for cell in table_cells(config, [table])]
        low, high = (sum(per_cell[i][end] for i in ids) for end in (0, 1))
        print(f"{table:<52}{len(ids):>6}{low:>30.0f} to {high:.0f}")

    if figure_only:
        low, high = (sum(per_cell[c.id][end] for c in figure_only) for end in (0, 1))
        print(f"{'cells only the figures use':<52}{len(figure_only):>6}{low:>30.0f} to {high:.0f}")

    extra: dict[str, tuple[float, float]] = {}
    # AutoAttack of the reference checkpoints (all_reference)
    reference = [0.0, 0.0]
    for entry in config["reference_models"]["models"].values():
        dataset = config["datasets"][entry["dataset"]]
        flops = forward_flops(arch_for_flops(config, entry["arch"]), dataset["num_classes"], dataset["image_size"])
        published = entry["published"]
        hours = costs.hours(dataset["eval_n"] * flops * autoattack_passes(published["clean"] / 100,
                                                                          published["autoattack"] / 100),
                            math_precision(config, entry["arch"], False))
        reference = [reference[0] + hours[0], reference[1] + hours[1]]
    extra["AutoAttack of the reference checkpoints"] = tuple(reference)
    # sampling and feature extraction
    sampling, features = [0.0, 0.0], [0.0, 0.0]
    stores: set[tuple[str, str, int, str]] = set()
    for cell in table_cells(config):
        if config["methods"][cell.method]["dra"]:
            method = config["methods"][cell.method]
            target = dra_target_model(config, cell.dataset, method.get("dra_target", "diffusion"))
            views = feature_views(config, cell)
            stores.add((cell.dataset, "train", views, target))
            if config["methods"][cell.method]["synthetic"]:
                stores.add((cell.dataset, cell.synthetic, views, target))
    lightningdit_cache: dict[str, dict] = {}
    for dataset_name, store, views, target in sorted(stores):
        dataset = config["datasets"][dataset_name]
        images = (split_sizes(config, dataset_name)[0] or 0) if store == "train" else synthetic_size(
            config, dataset_name, store)
        model = config["diffusion_models"][target]
        if uses_edm(config, dataset_name):
            label_dim = 0 if model["source"]["kind"] == "noisy_classifier" else dataset["num_classes"]
            from dra.config import diffusion_feature

            flops = edm_forward_flops(diffusion_feature(config, target)["layer"], label_dim)
            hours = costs.hours(images * views * flops, "tf32")
        else:
            parts = lightningdit_cache.setdefault(target, lightningdit_flops(model["source"]))
            flops = parts["encode"] + LIGHTNINGDIT_FEATURE_FRACTION * parts["dit"]
            hours = costs.hours(images * views * flops, "fp32")
        features = [features[0] + hours[0], features[1] + hours[1]]
    for dataset_name, dataset in config["datasets"].items():
        model = config["diffusion_models"][dataset["diffusion"]]
        for name, spec in dataset["synthetic"].items():
            if "generate" in spec and model["source"]["kind"] == "lightningdit":
                parts = lightningdit_cache.setdefault(dataset["diffusion"], lightningdit_flops(model["source"]))
                guided = 2 if model["sampling"]["cfg_scale"] > 1 else 1  # the guidance pair in one batch
                per_image = spec["generate"]["num_steps"] * guided * parts["dit"] + parts["decode"]
                hours = costs.hours(synthetic_size(config, dataset_name, name) * per_image, "fp32")
                sampling = [sampling[0] + hours[0], sampling[1] + hours[1]]
                print(f"\nsampling {dataset_name} {name}: {synthetic_size(config, dataset_name, name):,} images x "
                      f"{per_image / 1e12:.1f} TFLOP (fp32, the sampler's default) = "
                      f"{synthetic_size(config, dataset_name, name) * per_image:.2e} FLOP")
    extra["synthetic sampling (LightningDiT)"] = tuple(sampling)
    extra["feature extraction (DRA targets)"] = tuple(features)
    cells_total = [sum(v[0] for v in per_cell.values()), sum(v[1] for v in per_cell.values())]
    print()
    print(f"{f'all {len(per_cell)} cells, each once: training and AutoAttack':<58}{cells_total[0]:>10.0f} to "
          f"{cells_total[1]:.0f}")
    for name, (low, high) in extra.items():
        print(f"{name:<58}{low:>10.0f} to {high:.0f}")
    low = cells_total[0] + sum(v[0] for v in extra.values())
    high = cells_total[1] + sum(v[1] for v in extra.values())
    print(f"total GPU-hours on {args.gpu}: {low:.0f} to {high:.0f}")


if __name__ == "__main__":
    main()
