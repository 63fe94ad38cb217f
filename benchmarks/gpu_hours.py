"""What each training cell of a configuration costs, in images, FLOPs and GPU-hours.

    python benchmarks/gpu_hours.py                                  # config.yaml, FLOPs only
    python benchmarks/gpu_hours.py --wrn28-images-per-second 1500   # + GPU-hours from a measured rate
    python benchmarks/gpu_hours.py --configfile config/short.yaml

GPU-hours come from the canary's measured GPU seconds per image where the per-image memory table
(config hardware.memory_per_image, rewritten by scripts/canary_table.py --memory-table after a GPU
canary) has them for the cell's architecture, size and precision (column source: canary), else from
the FLOP estimate below (source: FLOPs). The GPUs column is the cell's plan (dra.gpu_plan).

Method: a cell trains ceil(epoch_reference_size / batch) * epochs steps of `batch` images
(DM-AT's epoch length, core/data/semisup.py). Per image, a TRADES-k step costs k attack forward+backward
passes, one forward of p_nat, and two forward+backward passes of the outer loss; PGD-AT has no
clean pass. A backward pass is counted as twice a forward. Forward FLOPs per image come from
torch's FlopCounterMode on each architecture (on the meta device: nothing is computed). The
GPU-hours column scales a measured WRN-28-10 TRADES-10 training rate (benchmarks/gpu_train_step.py
on the target GPU) by the FLOPs ratio, which assumes the same hardware efficiency for every
architecture; it is an estimate to plan with, not a measurement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from snakemake.utils import update_config
from torch.utils.flop_counter import FlopCounterMode

from dra.config import resolve_arch, table_cells, train_plan, training_steps
from dra.gpu_plan import precision_name, read_memory_table
from dra.models import create_classifier

ROOT = Path(__file__).resolve().parent.parent


def forward_flops(arch: dict, num_classes: int, image_size: int) -> float:
    with torch.device("meta"):
        model = create_classifier(arch, num_classes, [0.5] * 3, [0.5] * 3)
        images = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    return float(counter.get_total_flops())


def passes_per_image(objective: str, attack_steps: int) -> float:
    """Forward-pass equivalents per training image (backward = 2 forwards)."""
    if objective == "standard":
        return 3.0
    if objective == "pgd_at":
        return 3.0 * attack_steps + 3.0
    return 3.0 * attack_steps + 1.0 + 2 * 3.0  # TRADES: attack, p_nat, clean and adversarial outer passes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default=None, help="overlay on config.yaml (e.g. config/short.yaml)")
    parser.add_argument("--wrn28-images-per-second", type=float, default=None,
                        help="measured WRN-28-10 TRADES-10 training images/s on the target GPU")
    args = parser.parse_args(argv)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if args.configfile:
        update_config(config, yaml.safe_load(Path(args.configfile).read_text()))
    reference = forward_flops({"family": "wrn", "depth": 28, "width": 10, "activation": "silu"}, 10, 32)
    reference_per_image = reference * passes_per_image("trades", 10)
    memory_table = read_memory_table(ROOT / config["hardware"]["memory_per_image"])
    print(f"{'cell':<52}{'steps':>9}{'Mimages':>9}{'fwd GFLOP':>10}{'PFLOP':>10}{'GPUs':>5}{'GPU-h':>8}  source")
    total_hours = 0.0
    for cell in table_cells(config):
        dataset = config["datasets"][cell.dataset]
        recipe = config["recipes"][cell.dataset][cell.arch]
        steps = training_steps(config, cell)
        images = steps * cell.batch_size
        arch = resolve_arch(config, cell.arch, config["seed"])
        # FLOPs need the architecture only, not its (pretrained or encoder) weights
        arch.pop("weights", None)
        arch.pop("pretrained", None)
        if arch["family"] == "edm_encoder" and not Path(arch["network"]).is_file():
            # the fine-tuned diffusion encoder (Section 5.6) is built from the diffusion model's json
            print(f"{cell.id:<52}{steps:>9}{images / 1e6:>9.1f}  needs {arch['network']} (convert the EDM first)")
            continue
        flops = forward_flops(arch, dataset["num_classes"], dataset["image_size"])
        objective = config["methods"][cell.method]["objective"]
        total = images * flops * passes_per_image(objective, recipe["attack"]["steps"])
        row = memory_table.get((cell.arch, dataset["image_size"], precision_name(recipe["precision"])))
        hours, source = "-", "-"
        if row is not None and row.gpu_seconds_per_image is not None:
            # every GPU of the job spends its images' measured seconds: GPU-hours = images x seconds per image
            seconds, source = images * row.gpu_seconds_per_image, "canary"
        elif args.wrn28_images_per_second:
            seconds, source = total / (reference_per_image * args.wrn28_images_per_second), "FLOPs"
        if source != "-":
            total_hours += seconds / 3600
            hours = f"{seconds / 3600:.0f}"
        gpus = train_plan(config, cell).gpus
        print(f"{cell.id:<52}{steps:>9}{images / 1e6:>9.1f}{flops / 1e9:>10.2f}{total / 1e15:>10.0f}{gpus:>5}{hours:>8}"
              f"  {source}")
    if total_hours:
        print(f"total GPU-hours (training only, the cells with a source): {total_hours:.0f}")


if __name__ == "__main__":
    main()
