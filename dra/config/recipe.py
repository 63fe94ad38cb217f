"""The resolved recipe of a cell (docs/architecture.md), the one file the training script reads, and
what it derives: a diffusion model's DRA feature, an arch's files, the cell's GPU plan."""

from __future__ import annotations

import copy
import math
from pathlib import Path

from dra.config.cells import (diffusion_checkpoint, feature_store, feature_views, pretrained_weights,
                              reads_imagenet_folder, split_store, synthetic_store)
from dra.config.core import Cell
from dra.config.sizes import dra_target_model


def diffusion_feature(config: dict, model: str) -> dict:
    """The DRA feature of a diffusion model: ``diffusion_models.<model>.feature``, or, for a noisy
    classifier, the feature of the diffusion model it replaces (Appendix E: the same noisy inputs)."""
    entry = config["diffusion_models"][model]
    if entry["source"]["kind"] == "noisy_classifier":
        return config["diffusion_models"][entry["source"]["diffusion"]]["feature"]
    return entry["feature"]


def resolve_arch(config: dict, arch: str, seed: int) -> dict:
    """The arch entry, with an edm_encoder's diffusion model expanded into files, layer and sigma."""
    entry = copy.deepcopy(config["archs"][arch])
    if "pretrained" in entry:
        # the download's URL stays in config; training reads the fetched file
        entry["pretrained"], entry["weights"] = True, pretrained_weights(config, arch)
    if entry["family"] != "edm_encoder":
        return entry
    model = entry.pop("diffusion")
    weights = diffusion_checkpoint(config, model)
    return {
        **entry,
        "network": str(Path(weights).with_suffix(".json")),
        "weights": weights,
        "layer": diffusion_feature(config, model)["layer"],
        "sigma": diffusion_feature(config, model)["sigma"],
        "noise_seed": seed,
    }


def training_steps(config: dict, cell: Cell) -> int:
    """DM-AT's epoch length (ceil(epoch_reference_size / batch) steps) times the cell's epochs."""
    return math.ceil(config["datasets"][cell.dataset]["epoch_reference_size"] / cell.batch_size) * cell.epochs


def train_plan(config: dict, cell: Cell):
    """GPUs, micro-batches per GPU and time limit of the cell's training job (dra.gpu_plan)."""
    from dra.gpu_plan import plan_cell

    return plan_cell(config, cell, config["methods"][cell.method]["objective"],
                     config["recipes"][cell.dataset][cell.arch]["precision"],
                     config["datasets"][cell.dataset]["image_size"], training_steps(config, cell))


def resolve_recipe(config: dict, cell: Cell) -> dict:
    """Everything the training script needs for one cell (docs/architecture.md)."""
    dataset = config["datasets"][cell.dataset]
    method = config["methods"][cell.method]
    # every random draw of training (init, batches, augmentation, attack starts, DRA head) derives
    # from this seed (dra.training.loop); a replicate's comes from its path
    seed = config["seed"] if cell.seed is None else cell.seed
    recipe = copy.deepcopy(config["recipes"][cell.dataset][cell.arch])
    attack = recipe.pop("attack")
    objective = recipe.pop("objective")
    unsup_fraction = recipe.pop("unsup_fraction")
    synthetic = (
        synthetic_store(config, cell.dataset, cell.synthetic) if method["synthetic"] else None
    )
    dra = None
    if method["dra"]:
        views = feature_views(config, cell)
        diffusion_name = dra_target_model(config, cell.dataset, method.get("dra_target", "diffusion"))
        feature = diffusion_feature(config, diffusion_name)
        dra = {
            # a method may set its own strength (the lambda sweep of Figure 8)
            "lambda": method.get("lambda", config["dra"]["lambda"]),
            "head_hidden": config["dra"]["head_hidden"],
            "head_layers": config["dra"]["head_layers"],
            "target": config["dra"]["target"],
            "features": {
                "real": feature_store(config, cell.dataset, "train", views, diffusion_name),
                "synthetic": (
                    feature_store(config, cell.dataset, f"synthetic-{cell.synthetic}", views, diffusion_name)
                    if synthetic
                    else None
                ),
            },
            "diffusion": {
                "checkpoint": diffusion_checkpoint(config, diffusion_name),
                "layer": feature["layer"],
                "sigma": feature.get("sigma"),   # EDM; LightningDiT features are stored (t, channels)
                "extra_view": views == 2,
            },
        }
    if method["objective"] == "standard":
        # a standard model's robust validation accuracy stays near 0, so selecting on it would
        # keep the first validated checkpoint
        recipe["checkpoint"]["select"] = "last"
    resolved = {
        "cell": {"dataset": cell.dataset, "arch": cell.arch, "method": cell.method, "budget": cell.budget},
        "seed": seed,
        "data": {
            "train": split_store(config, cell.dataset, "train"),
            "synthetic": synthetic,
            "val_size": dataset["val_size"],
            "epoch_reference_size": dataset["epoch_reference_size"],
            "unsup_fraction": unsup_fraction,
            "num_classes": dataset["num_classes"],
            "mean": dataset["mean"],
            "std": dataset["std"],
            "augment": dataset["augment"],
            # image_store: uint8 arrays, random crop with padding; imagenet_index: JPEGs through the
            # index, RandomResizedCrop to image_size (dra.training.imagenet_batches)
            "format": "imagenet_index" if reads_imagenet_folder(config, cell.dataset) else "image_store",
            "image_size": dataset["image_size"],
        },
        "arch": resolve_arch(config, cell.arch, seed),
        "attack": {
            # one budget per dataset: the one AutoAttack evaluates (datasets.<d>.eps_255)
            "eps": dataset["eps_255"] / 255,
            "step": attack["step_255"] / 255,
            "steps": attack["steps"],
        },
        "objective": {"name": method["objective"], **objective},
        "dra": dra,
        **recipe,
        "batch_size": cell.batch_size,
        "epochs": cell.epochs,
        # micro-batches per GPU: what the memory model gives the cell on the configured hardware
        "accumulation_steps": train_plan(config, cell).accumulation_steps,
    }
    if config["canary"]["cap_training"]:
        # the canary: one epoch of canary.steps optimizer steps at the cell's global batch (or
        # canary.batch_size, then without accumulation), on the planned GPUs; all else as the paper run
        steps, batch = config["canary"]["steps"], config["canary"]["batch_size"]
        if batch is not None:
            resolved.update(batch_size=batch, accumulation_steps=1)
        resolved["epochs"] = 1
        resolved["data"]["epoch_reference_size"] = steps * resolved["batch_size"]
        # a state saved inside the step loop too (and the end-of-epoch validation and save, as the paper run)
        resolved["checkpoint"]["every_steps"] = min(resolved["checkpoint"]["every_steps"], steps)
    return resolved
