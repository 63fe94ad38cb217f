"""Models that leave the project: `load_model` and a cell's export folder.

An export folder (rule export_cell, `<cell>/export/`) holds

- ``model.safetensors``: the selected weights (train/model.pt), with the model's description in the
  file's metadata, so that a config.json edited afterwards is caught at load time;
- ``config.json``: what rebuilds the module: family, constructor arguments, classes, input size,
  mean and std, dataset, threat model (norm and eps);
- ``README.md``: a Hugging Face model card (YAML header: datasets, metrics, library, license of the
  weights' sources) with the recipe, the measured accuracies and their intervals, the paper's
  numbers and the provenance; ``LICENSE.md``: the terms of those sources;
- for a CIFAR WideResNet, ``robustbench/models/<dataset>/Linf/<name>.pt`` (RobustBench's model_dir
  layout, a state dict whose keys are those of RobustBench's DMWideResNet) and
  ``robustbench/model_info/<dataset>/Linf/<name>.json`` (the leaderboard's model_info schema).

`huggingface_hub.upload_folder(folder_path=<export>, repo_id=...)` uploads it as it is.

Nothing is written that was not checked: before the folder is renamed into place, the model
rebuilt from the folder alone (and from the RobustBench checkpoint with the constructor
arguments stated for it) must give exactly the logits of the model AutoAttack evaluated
(dra.evaluation.autoattack.load_classifier on the cell's model.pt and recipe.yaml), so an export
with another normalisation, architecture or weights than the evaluated model cannot be produced.

Facts of RobustBench 1.1.1 (robustbench/model_zoo/architectures/dm_wide_resnet.py): DMWideResNet
takes num_classes, depth, width, activation_fn, mean and std; mean and std are non-persistent
buffers (not in the state dict), so the normalisation is a constructor argument; its module
names are DM-AT's (init_conv, layer.N.block.M.{batchnorm_0, conv_0, batchnorm_1, conv_1,
shortcut}, batchnorm, logits), which dra.models.wideresnet uses too; its forward pools with
avg_pool2d(8), so it takes 32x32 inputs only. robustbench/utils.py load_model reads
<model_dir>/<dataset>/<threat_model>/<name>.pt and loads it with strict=True. The model_info keys
are those of RobustBench/robustbench model_info/cifar10/Linf/Wang2023Better_WRN-28-10.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from dra.io import atomic_dir, package_versions, read_yaml

FORMAT = "dra-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
LICENSE_FILE = "LICENSE.md"
CELL_RECIPE = "recipe.yaml"
CELL_WEIGHTS = "train/model.pt"
METADATA_KEY = "dra_model"  # the model's description inside the safetensors file
# The paper the method is from (arXiv:2602.19931v1; docs/sources.md), for RobustBench's model_info
PAPER = {
    "link": "https://arxiv.org/abs/2602.19931",
    "name": "Expanding the Role of Diffusion Models for Robust Classifier Training",
    "authors": "Pin-Han Huang, Shang-Tse Chen, Hsuan-Tien Lin",
    "venue": "arXiv, Feb 2026",
    "entry_prefix": "Huang2026Expanding",  # RobustBench's <FirstAuthorYearFirstWord> naming (its new-model template)
}
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")
ROBUSTBENCH_ACTIVATIONS = {"silu": "SiLU", "swish": "SiLU", "relu": "ReLU"}  # ours -> torch.nn class
PROBE_IMAGES = 8  # images of the export's self-check
_FAMILY_WORDS = {"wrn": "WideResNet", "timm": "timm model", "edm_encoder": "EDM U-Net encoder with a linear head"}


class ExportError(ValueError):
    """An export that cannot be written, or a folder that does not hold the model it says."""


# ---------------------------------------------------------------------------------------- the model


def _find_network(network: str, cell_dir: Path) -> Path:
    """The EDM network json a recipe names: as written (relative to the working directory, where
    the workflow ran), else relative to a folder above the cell (the workflow's root)."""
    path = Path(network)
    if path.is_file():
        return path
    for parent in cell_dir.resolve().parents:
        if (parent / network).is_file():
            return parent / network
    raise ExportError(f"{cell_dir / CELL_RECIPE}: arch.network {network} is not found (from the working directory "
                      f"or any folder above the cell); run from the workflow's root, or load the cell's export")


def model_spec(recipe: Mapping[str, Any], cell_dir: str | Path | None = None) -> dict:
    """What rebuilds a cell's module, from its resolved recipe: family, constructor arguments
    (without the training-only starting weights), classes, input size, mean and std."""
    try:
        arch = {key: value for key, value in recipe["arch"].items() if key not in ("pretrained", "weights")}
        data = recipe["data"]
        num_classes = int(data["num_classes"])
        mean, std = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    except KeyError as error:
        raise ExportError(f"the recipe lacks {error}; re-run resolve_recipe") from None
    if arch.get("family") == "edm_encoder" and not isinstance(arch.get("network"), dict):
        # the network's configuration itself, so that the export needs no file of the workflow
        arch["network"] = json.loads(_find_network(str(arch["network"]), Path(cell_dir or ".")).read_text())
    size = data.get("image_size") or (32 if recipe.get("reference") else None)  # DM-AT's references are CIFAR
    return {"family": arch["family"], "arch": arch, "num_classes": num_classes, "mean": mean, "std": std,
            "input_size": [len(mean), int(size), int(size)] if size else None}


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    from dra.models import create_classifier

    return create_classifier(dict(spec["arch"]), spec["num_classes"], spec["mean"], spec["std"])


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, spec: Mapping[str, Any]) -> None:
    """Strict loading; a mismatch names the missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        parts = [f"{label} {len(keys)} ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("shape mismatches (file vs model)", misshaped)) if keys]
        raise ExportError(f"{source} does not hold the weights of {spec['family']} {_arch_words(spec)} with "
                          f"{spec['num_classes']} classes: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _arch_words(spec: Mapping[str, Any]) -> str:
    arch = spec["arch"]
    if spec["family"] == "wrn":
        return f"WRN-{arch['depth']}-{arch['width']} ({arch.get('activation', 'silu')})"
    if spec["family"] == "timm":
        return f"{arch['name']} {arch.get('kwargs') or ''}".strip()
    return f"up to {arch.get('layer')} at sigma {arch.get('sigma')}"


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def _load_export(folder: Path) -> nn.Module:
    from safetensors import safe_open
    from safetensors.torch import load_file

    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{config_path} is not JSON ({error})") from None
    if config.get("format") != FORMAT:
        raise ExportError(f"{config_path} is not a DRA export (format {config.get('format')!r}, expected {FORMAT!r})")
    if not weights_path.is_file():
        raise ExportError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    spec = {key: config[key] for key in ("family", "arch", "num_classes", "mean", "std", "input_size")}
    with safe_open(str(weights_path), framework="pt") as handle:
        stored = json.loads((handle.metadata() or {}).get(METADATA_KEY, "null") or "null")
    if stored is None:
        raise ExportError(f"{weights_path} carries no '{METADATA_KEY}' metadata: it was not written by dra.export")
    differ = _differences(spec, stored)
    if differ:
        shown = "; ".join(f"{key}: config.json {spec.get(key)!r}, weights {stored.get(key)!r}" for key in differ)
        raise ExportError(f"{config_path} does not describe the model {weights_path} was exported with ({shown}); "
                          "restore config.json from the export")
    model = build_model(spec)
    _load_weights(model, load_file(str(weights_path)), str(weights_path), spec)
    return model


def _load_cell(cell_dir: Path) -> nn.Module:
    recipe = read_yaml(cell_dir / CELL_RECIPE)
    spec = model_spec(recipe, cell_dir)
    try:
        state = torch.load(cell_dir / CELL_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file: say which, and why
        raise ExportError(f"{cell_dir / CELL_WEIGHTS} is not a readable state dict ({type(error).__name__}: "
                          f"{error}); rerun the rule that wrote it") from None
    model = build_model(spec)
    _load_weights(model, state, str(cell_dir / CELL_WEIGHTS), spec)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a cell folder (recipe.yaml + train/model.pt, a trained cell or a reference
    checkpoint) or of an export folder (config.json + model.safetensors), in eval mode, taking
    images in [0, 1] with its normalisation inside and returning logits."""
    folder = Path(path)
    if (folder / CONFIG_FILE).is_file():
        model = _load_export(folder)
    elif (folder / CELL_RECIPE).is_file() and (folder / CELL_WEIGHTS).is_file():
        model = _load_cell(folder)
    else:
        raise ExportError(f"{folder} is neither an export folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a cell folder "
                          f"({CELL_RECIPE} + {CELL_WEIGHTS}); pass results/<scale>/<dataset>/<arch>/<method>/<budget> "
                          "or its export/ folder")
    return model.to(device).float().eval()


# ---------------------------------------------------------------------------------------- RobustBench


def robustbench_entry(spec: Mapping[str, Any], dataset_kind: str, cell: Mapping[str, str]) -> dict | None:
    """Name, dataset, threat model and DMWideResNet constructor arguments of a CIFAR WideResNet;
    None for a model RobustBench's DeepMind WideResNet cannot hold (or a non-CIFAR dataset)."""
    arch = spec["arch"]
    if (spec["family"] != "wrn" or dataset_kind not in ROBUSTBENCH_DATASETS or spec["input_size"] != [3, 32, 32]
            or arch.get("activation", "silu") not in ROBUSTBENCH_ACTIVATIONS):
        return None
    suffix = "_".join(re.sub(r"[^A-Za-z0-9-]+", "-", cell[key]) for key in ("arch", "method", "budget"))
    return {
        "model_name": f"{PAPER['entry_prefix']}_{suffix}",
        "dataset": dataset_kind,
        "threat_model": "Linf",
        "kwargs": {"num_classes": spec["num_classes"], "depth": int(arch["depth"]), "width": int(arch["width"]),
                   "activation_fn": ROBUSTBENCH_ACTIVATIONS[arch.get("activation", "silu")],
                   "mean": spec["mean"], "std": spec["std"]},
    }


def robustbench_model_info(entry: Mapping[str, Any], spec: Mapping[str, Any], evaluation: Mapping[str, Any],
                           recipe: Mapping[str, Any], cell_id: str) -> dict:
    """The leaderboard's model_info JSON (the keys and types of RobustBench's own files)."""
    synthetic = recipe["data"].get("synthetic")
    footnote = (f"Reproduction of the cell {cell_id} by the DRA workflow; AutoAttack ({evaluation['version']}) "
                f"on the first {evaluation['n']} test images.")
    if synthetic:
        footnote += f" It uses the synthetic set {synthetic.rstrip('/').rsplit('/', 1)[-1]} in training."
    return {
        "link": PAPER["link"], "name": PAPER["name"], "authors": PAPER["authors"],
        "additional_data": False, "number_forward_passes": 1, "dataset": entry["dataset"], "venue": PAPER["venue"],
        "architecture": f"WideResNet-{spec['arch']['depth']}-{spec['arch']['width']}",
        "eps": evaluation["eps_255"],
        "clean_acc": f"{evaluation['clean_accuracy']:.2f}",
        "reported": f"{evaluation['robust_accuracy']:.2f}",
        "autoattack_acc": f"{evaluation['robust_accuracy']:.2f}",
        "footnote": footnote,
        "unreliable": False,
    }


def robustbench_paths(entry: Mapping[str, Any]) -> tuple[str, str]:
    tail = f"{entry['dataset']}/{entry['threat_model']}/{entry['model_name']}"
    return f"robustbench/models/{tail}.pt", f"robustbench/model_info/{tail}.json"


def _dm_wide_resnet_logits(checkpoint: Path, entry: Mapping[str, Any], images01: torch.Tensor) -> torch.Tensor:
    """Logits of the RobustBench checkpoint with the stated constructor arguments, in our WideResNet
    (DMWideResNet's layout and names; RobustBench is not installed in the rule's env).
    tests/test_export.py runs RobustBench's own class on the same file: the same logits to float32
    rounding (it pools with avg_pool2d(8) where we take the mean over H and W)."""
    from dra.models.wideresnet import WideResNet

    kwargs = entry["kwargs"]
    activation = {"SiLU": "silu", "ReLU": "relu"}[kwargs["activation_fn"]]
    model = WideResNet(kwargs["depth"], kwargs["width"], kwargs["num_classes"], kwargs["mean"], kwargs["std"],
                       activation=activation)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    with torch.no_grad():
        return model.eval()(images01)


# ---------------------------------------------------------------------------------------- provenance


def read_benchmark_seconds(path: str | Path) -> float:
    """Wall seconds of a job from its Snakemake benchmark file (column s; the mean over repeats)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ExportError(f"{path} is not a Snakemake benchmark file (a tab-separated table with a column 's')")
    return float(np.mean([float(row["s"]) for row in rows]))


def compute_hours(benchmarks: Mapping[str, str | Path], gpus: Mapping[str, int]) -> list[dict]:
    jobs = []
    for job, path in benchmarks.items():
        seconds = read_benchmark_seconds(path)
        count = int(gpus.get(job, 0))
        jobs.append({"job": job, "benchmark": str(path), "wall_hours": seconds / 3600, "gpus": count,
                     "gpu_hours": seconds * count / 3600})
    return jobs


def workflow_commit(root: str | Path = ".") -> str:
    """The checked-out commit of the workflow, with a mark when files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (the workflow folder is not a git checkout)"
    return commit.stdout.strip() + (" with uncommitted changes" if dirty else "")


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- the export


def export_cell(recipe_path: str | Path, model_path: str | Path, autoattack_json: str | Path,
                autoattack_flags: str | Path, benchmarks: Mapping[str, str | Path], gpus: Mapping[str, int],
                out_dir: str | Path, *, dataset_kind: str, sources: list[dict], paper: list[dict],
                workflow_root: str | Path = ".") -> dict:
    """Write a cell's export folder (see the module's docstring); returns its config and files."""
    from safetensors.torch import save_file

    from dra.analysis.significance import accuracy_interval
    from dra.evaluation.autoattack import load_classifier
    from dra.io import write_json
    from dra.model_card import render_card, render_license

    recipe_path = Path(recipe_path)
    recipe = read_yaml(recipe_path)
    evaluation = json.loads(Path(autoattack_json).read_text())
    flags = np.load(autoattack_flags)
    clean_flags, robust_flags = flags["clean"], flags["robust"]
    for name, values, key in (("clean", clean_flags, "clean_accuracy"), ("robust", robust_flags, "robust_accuracy")):
        if len(values) != evaluation["n"] or abs(100.0 * values.mean() - evaluation[key]) > 1e-9:
            raise ExportError(f"{autoattack_flags}: the {name} flags ({int(values.sum())} of {len(values)}) "
                              "do not give "
                              f"{autoattack_json}'s {key} {evaluation[key]} on n = {evaluation['n']}; rerun autoattack")
    spec = model_spec(recipe, recipe_path.parent)
    evaluated = load_classifier(model_path, recipe_path, "cpu")  # the very model AutoAttack evaluated
    state = {key: value.detach().contiguous() for key, value in evaluated.state_dict().items()}
    cell = recipe["cell"]
    cell_id = "/".join(cell[key] for key in ("dataset", "arch", "method", "budget"))
    if spec["input_size"] is None:
        raise ExportError(f"{recipe_path} has no data.image_size; re-run resolve_recipe")
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": f"DRA reproduction: {cell_id}", "cell": cell_id,
        **spec,
        "family_description": _FAMILY_WORDS.get(spec["family"], spec["family"]) + f" ({_arch_words(spec)})",
        "input_range": [0.0, 1.0],
        "dataset": {"name": cell["dataset"], "kind": dataset_kind},
        "threat_model": {"norm": evaluation["norm"], "eps": evaluation["eps"], "eps_255": evaluation["eps_255"]},
        "weights": WEIGHTS_FILE,
    }
    entry = robustbench_entry(spec, dataset_kind, cell)
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, METADATA_KEY: json.dumps(spec)})
        if entry is not None:
            checkpoint, info = robustbench_paths(entry)
            (tmp / checkpoint).parent.mkdir(parents=True)
            torch.save(state, tmp / checkpoint)
            # RobustBench's key order (its files are not sorted)
            (tmp / info).parent.mkdir(parents=True)
            model_info = robustbench_model_info(entry, spec, evaluation, recipe, cell_id)
            (tmp / info).write_text(json.dumps(model_info, indent=2) + "\n")
            config["robustbench"] = {**entry, "checkpoint": checkpoint, "model_info": info}
        write_json(tmp / CONFIG_FILE, config)
        versions = package_versions()
        for name in ("safetensors", "huggingface_hub", "scipy"):
            from importlib import metadata

            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        compute = compute_hours(benchmarks, gpus)
        facts = {
            "config": config, "evaluation": evaluation, "recipe": recipe, "sources": sources, "paper": paper,
            "intervals": {"clean": accuracy_interval(clean_flags), "robust": accuracy_interval(robust_flags)},
            "robustbench": config.get("robustbench"),
            "provenance": {"commit": workflow_commit(workflow_root), "recipe_sha256": _sha256(recipe_path),
                           "weights_sha256": _sha256(tmp / WEIGHTS_FILE), "packages": versions,
                           "compute": compute, "gpu_hours": sum(job["gpu_hours"] for job in compute)},
        }
        (tmp / CARD_FILE).write_text(render_card(facts))
        (tmp / LICENSE_FILE).write_text(render_license(sources))
        difference = _check_export(tmp, evaluated, spec, entry)
    files = {str(p.relative_to(out_dir)): p.stat().st_size for p in sorted(Path(out_dir).rglob("*")) if p.is_file()}
    return {"config": config, "files": files, "robustbench_max_abs_logit_difference": difference,
            "gpu_hours": facts["provenance"]["gpu_hours"]}


def _check_export(folder: Path, evaluated: nn.Module, spec: Mapping[str, Any], entry: Mapping[str, Any] | None):
    """The folder's model (and RobustBench checkpoint) against the evaluated model, bit for bit on
    seeded images in [0, 1]; returns the largest logit difference of the RobustBench checkpoint."""
    generator = torch.Generator().manual_seed(0)
    images01 = torch.rand(PROBE_IMAGES, *spec["input_size"], generator=generator)
    with torch.no_grad():
        expected = evaluated.eval()(images01)
        exported = load_model(folder).eval()(images01)
    if not torch.equal(expected, exported):
        raise ExportError(
            f"the export's model gives other logits than the evaluated model (largest difference "
            f"{(expected - exported).abs().max().item():.3g}): config.json's mean {spec['mean']}, std {spec['std']} "
            "or architecture are not the cell's; nothing was written")
    if entry is None:
        return None
    checkpoint = folder / robustbench_paths(entry)[0]
    robust_logits = _dm_wide_resnet_logits(checkpoint, entry, images01)
    if not torch.equal(expected, robust_logits):
        raise ExportError(
            f"the RobustBench checkpoint with DMWideResNet{tuple(entry['kwargs'].items())} gives other logits than the "
            f"evaluated model (largest difference {(expected - robust_logits).abs().max().item():.3g}); "
            "nothing was written")
    return float((expected - robust_logits).abs().max())


__all__ = ["ExportError", "build_model", "export_cell", "load_model", "model_spec", "robustbench_entry"]
