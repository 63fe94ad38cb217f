"""Rows of the per-image memory table (config/data/memory_per_image.csv) measured on the CPU.

Bytes saved for backward per image by one train-mode graph of the classifier and its DRA head, as
the canary measures them (dra.canary.saved_mib_per_image -> dra.training.memory.saved_bytes_per_image:
saved-tensor hooks, the slope between batches of 2 and 4), at the paper's configuration: the
architecture of config.yaml (randomly initialised: the count does not depend on the weights), the
DRA head of config.yaml's dra section onto the target width of the cell's diffusion features, the
precision given and channels_last as the recipes set it. The CPU canary (config/canary-cpu.yaml,
scripts/canary_table.py --memory-table) measures the same number for the cells it trains; this
measures rows that no canary cell trains, e.g. the ImageNet networks in fp32 for GPUs without bf16.

    python benchmarks/memory_rows.py --arch convnext-b vit-b-16 --image-size 224 --target-dim 1152 --fp32

Prints the CSV rows (arch, image_size, precision, saved_mib_per_image, parameters,
gpu_seconds_per_image, measured); --target-dim: LightningDiT-XL's width (1152) for ImageNet, the EDM
feature's channels (256) for CIFAR. The bf16 rows it prints for convnext-b and vit-b-16 equal the
table's, taken by the CPU canary.
"""

from __future__ import annotations

import argparse
import datetime

import torch
import yaml

from dra.models import create_classifier
from dra.training.dra_head import ProjectionHead
from dra.training.memory import saved_bytes_per_image

# ImageNet's mean and std (the DINOv3 backbones' pretrained config); the count does not depend on them
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def measure(arch: dict, num_classes: int, image_size: int, dra: dict, target_dim: int, bf16: bool,
            channels_last: bool) -> tuple[float, int]:
    """MiB saved for backward per image, and parameters, of the classifier with its DRA head."""
    arch = {**arch, "pretrained": False}  # random weights: no download, the same graph
    model = create_classifier(arch, num_classes, MEAN, STD)
    head = ProjectionHead(model.feature_dim, dra["head_hidden"], target_dim, dra["head_layers"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    per_image = saved_bytes_per_image(model, head, image_size, bf16, channels_last, torch.device("cpu"))
    parameters = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters())
    return per_image / 2**20, parameters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--arch", nargs="+", required=True, help="names under the config's archs")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--target-dim", type=int, required=True, help="width of the DRA target features")
    parser.add_argument("--fp32", action="store_true", help="fp32 (default: bf16 autocast)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    precision = "fp32" if args.fp32 else "bf16"
    print("arch,image_size,precision,saved_mib_per_image,parameters,gpu_seconds_per_image,measured")
    for name in args.arch:
        mib, parameters = measure(config["archs"][name], args.num_classes, args.image_size, config["dra"],
                                  args.target_dim, not args.fp32, not args.no_channels_last)
        print(f"{name},{args.image_size},{precision},{mib:.1f},{parameters},,cpu {datetime.date.today()}", flush=True)


if __name__ == "__main__":
    main()
