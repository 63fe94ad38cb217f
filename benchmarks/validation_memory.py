"""Peak bytes saved for backward per GPU: the end-of-epoch validation against a training micro-batch.

Counted on the CPU with saved-tensor hooks (dra.training.memory.saved_for_backward_bytes), per image
as the slope between two small batches, then scaled to the planned batches of the paper's cells:
- training: graphs (2 for TRADES) x train-mode classifier (+ DRA head) bytes per image x the GPU
  plan's micro-batch (dra.gpu_plan, config hardware);
- validation, one step of DM-AT's 40-step CW attack: eval-mode classifier with frozen weights and
  the input's gradient, bytes per image x the images attacked at once:
  before: every held-out image on rank 0 in chunks of the recipe's batch (the old loop);
  after: each rank's share in chunks of at most the largest training micro-batch (dra.training.loop.validate).

    python benchmarks/validation_memory.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import torch
import yaml

from dra import config as cfg
from dra.gpu_plan import GIB, graphs_kept
from dra.models import create_classifier
from dra.attacks import cw_margin_objective
from dra.training.dra_head import ProjectionHead
from dra.training.memory import saved_bytes_per_image, saved_for_backward_bytes

ROOT = Path(__file__).resolve().parent.parent
CELLS = ["cifar10/wrn-70-16/dm-at/syn50m-bs1024-ep2000", "cifar10/vit-b-2/dm-at+dra/syn50m-bs1024-ep2000"]


def validation_bytes_per_image(model: torch.nn.Module, image_size: int, num_classes: int, bf16: bool,
                               batches: tuple[int, int] = (2, 4)) -> float:
    """Bytes saved by one step of the validation attack per image: eval mode, weights frozen,
    the CW margin's gradient with respect to the input (dra.attacks.pgd_linf)."""
    model.eval().requires_grad_(False)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    counted = []
    for batch in batches:
        images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(batch) % num_classes

        def forward(images=images, labels=labels):
            x = images.clone().requires_grad_(True)
            with autocast():
                return cw_margin_objective(labels)(model(x))

        counted.append(saved_for_backward_bytes(forward))
    return (counted[1] - counted[0]) / (batches[1] - batches[0])


def target_dim(config: dict, recipe: dict) -> int | None:
    """The DRA target's channels: the diffusion model's layer, built from its preset (no download)."""
    if recipe["dra"] is None:
        return None
    from dra.diffusion.edm import EDMPrecond
    from dra.diffusion.features import DiffusionFeatureExtractor
    from dra.network_presets import EDM_CIFAR10_DDPMPP

    layer = recipe["dra"]["diffusion"]["layer"]
    with torch.device("meta"):
        net = EDMPrecond(**EDM_CIFAR10_DDPMPP)
    return DiffusionFeatureExtractor(net, layer, recipe["dra"]["diffusion"]["sigma"]).dims[layer]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells", nargs="+", default=CELLS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["hardware"]["memory_per_image"] = str(ROOT / config["hardware"]["memory_per_image"])
    print(f"hardware: {config['hardware']['gpu_memory_gib']} GiB x {config['hardware']['gpus_per_node']} per node; "
          "GiB saved for backward per GPU (parameters, gradients and optimizer state come on top)\n")
    header = (f"{'cell':<50}{'GPUs x acc x micro':>20}{'train':>8}{'val before':>12}{'val after':>11}"
              f"{'after/train':>13}{'MiB/img train':>15}{'MiB/img val':>13}")
    print(header)
    for cell_id in args.cells:
        cell = cfg.parse_cell(cell_id)
        recipe = cfg.resolve_recipe(config, cell)
        plan = cfg.train_plan(config, cell)
        data, bf16 = recipe["data"], recipe["precision"]["bf16"]
        torch.manual_seed(0)
        model = create_classifier(recipe["arch"], data["num_classes"], data["mean"], data["std"])
        dim = target_dim(config, recipe)
        head = ProjectionHead(model.feature_dim, recipe["dra"]["head_hidden"], dim, recipe["dra"]["head_layers"]) \
            if dim is not None else None
        train_per_image = saved_bytes_per_image(model, head, data["image_size"], bf16, False, torch.device("cpu"))
        val_per_image = validation_bytes_per_image(model, data["image_size"], data["num_classes"], bf16)
        train = graphs_kept(recipe["objective"]["name"]) * train_per_image * plan.micro_batch
        # before: rank 0 alone, all val_size images in chunks of the recipe's batch
        before = val_per_image * min(recipe["batch_size"], data["val_size"])
        # after: each rank its share of the val_size images, in chunks of the largest micro-batch
        share = math.ceil(data["val_size"] / plan.gpus)
        after = val_per_image * min(share, plan.micro_batch)
        layout = f"{plan.gpus} x {plan.accumulation_steps} x {plan.micro_batch}"
        print(f"{cell_id:<50}{layout:>20}{train / GIB:>8.1f}{before / GIB:>12.1f}{after / GIB:>11.1f}"
              f"{after / train:>13.2f}{train_per_image / 2**20:>15.1f}{val_per_image / 2**20:>13.1f}")


if __name__ == "__main__":
    main()
