"""Reference cells: released checkpoints evaluated by our AutoAttack rule beside their published numbers.

Before training anything, the evaluation has to reproduce a published number: DM-AT's
released l_inf WideResNets (config ``reference_models``; DM-AT README.md and
RobustBench model_info/) are converted to our model layout (dra.models.dmat_checkpoint) and
attacked exactly as a trained cell is. Paths and recipes are computed here, for the workflow
(rules/reference.smk) and the tests alike.
"""

from __future__ import annotations

from dra.config import HOW_TO_FIX, ConfigError, download_fields

REFERENCE_DATASET_KINDS = ("cifar10", "cifar100")  # the datasets DM-AT released l_inf models for


def reference_names(config: dict) -> list[str]:
    return list(config["reference_models"]["models"])


def check_reference_models(config: dict) -> None:
    """Stop with one message naming the key when a reference entry points at nothing we have."""
    for name, entry in config["reference_models"]["models"].items():
        key = f"reference_models.models.{name}"
        dataset = config["datasets"].get(entry["dataset"])
        if dataset is None:
            raise ConfigError(f"config key {key}.dataset: '{entry['dataset']}' is not in datasets. {HOW_TO_FIX}")
        if dataset["source"]["kind"] not in REFERENCE_DATASET_KINDS:
            raise ConfigError(
                f"config key {key}.dataset: '{entry['dataset']}' is a {dataset['source']['kind']} dataset; "
                f"DM-AT checkpoints exist for {', '.join(REFERENCE_DATASET_KINDS)}. {HOW_TO_FIX}"
            )
        arch = config["archs"].get(entry["arch"])
        if arch is None:
            raise ConfigError(f"config key {key}.arch: '{entry['arch']}' is not in archs. {HOW_TO_FIX}")
        if arch["family"] != "wrn":
            raise ConfigError(f"config key {key}.arch: DM-AT checkpoints are WideResNets (family wrn). {HOW_TO_FIX}")


def reference_entry(config: dict, name: str) -> dict:
    return config["reference_models"]["models"][name]


def reference_dataset(config: dict, name: str) -> dict:
    """The datasets entry of a reference model (its eps, test-set size, normalization)."""
    return config["datasets"][reference_entry(config, name)["dataset"]]


def reference_recipe(config: dict, name: str) -> dict:
    """What the conversion and scripts/evaluate_autoattack.py read: arch, data.{num_classes, mean, std}."""
    entry = reference_entry(config, name)
    dataset = reference_dataset(config, name)
    return {
        "reference": {
            "name": name,
            "dataset": entry["dataset"],
            "dataset_kind": dataset["source"]["kind"],
            "robustbench": entry["robustbench"],
            "checkpoint_source": download_fields(entry["checkpoint"]),
            "published": dict(entry["published"]),
        },
        "arch": dict(config["archs"][entry["arch"]]),
        "data": {"num_classes": dataset["num_classes"], "mean": dataset["mean"], "std": dataset["std"]},
    }


def reference_table_spec(config: dict) -> dict:
    """The reference table for dra.analysis.tables: published ("Paper") and measured ("Ours") numbers."""
    rows = []
    for name, entry in config["reference_models"]["models"].items():
        rows.append(
            {
                # relative to results/<scale>, where build_table looks for <folder>/autoattack.json
                "result": f"reference/{name}",
                "label": {
                    "Dataset": entry["dataset"],
                    "Model": entry["arch"],
                    "Checkpoint": name,
                    "RobustBench": entry["robustbench"],
                },
                "paper": dict(entry["published"]),
            }
        )
    return {"title": config["reference_models"]["title"], "rows": rows}


def convert_reference_checkpoint(checkpoint_path: str, args_path: str | None, recipe_path: str, out_model: str) -> dict:
    """Convert a released DM-AT checkpoint into the model.pt that the recipe at ``recipe_path`` describes."""
    # imported here: the workflow imports this module to plan jobs, and planning needs no torch
    from dra.io import read_yaml
    from dra.models.dmat_checkpoint import CheckpointLayoutError, convert_dmat_checkpoint

    recipe = read_yaml(recipe_path)
    try:
        arch, data, kind = recipe["arch"], recipe["data"], recipe["reference"]["dataset_kind"]
        num_classes, mean, std = data["num_classes"], data["mean"], data["std"]
    except (KeyError, TypeError) as error:
        raise CheckpointLayoutError(
            f"recipe {recipe_path} lacks {error}; rerun the reference_recipe rule"
        ) from error
    return convert_dmat_checkpoint(
        checkpoint_path, out_model, arch, num_classes, mean, std, args_path=args_path, dataset_kind=kind
    )
