"""Read and validate the resolved recipe (docs/architecture.md, "The resolved recipe").

Every problem stops with one RecipeError naming the key, what was expected and what was found,
so a wrong config entry is fixed where it was written instead of failing hours into a run.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Callable

from dra.io import read_yaml


class RecipeError(ValueError):
    pass


_MISSING = object()


def _lookup(recipe: dict, key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_three_floats(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_number(x) for x in v)


# key -> (description of what is expected, check)
_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "cell": ("a mapping {dataset, arch, method, budget}", lambda v: isinstance(v, dict)),
    "seed": ("an integer", _is_int),
    "data.train": ("the path of the training image store", lambda v: isinstance(v, str) and v != ""),
    "data.synthetic": ("the path of the synthetic image store, or null", lambda v: v is None or (isinstance(v, str) and v != "")),
    "data.val_size": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "data.epoch_reference_size": ("an integer > 0 (DM-AT: 50000)", lambda v: _is_int(v) and v > 0),
    "data.unsup_fraction": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "data.num_classes": ("an integer >= 2", lambda v: _is_int(v) and v >= 2),
    "data.mean": ("a list of 3 numbers", _is_three_floats),
    "data.std": ("a list of 3 positive numbers", lambda v: _is_three_floats(v) and all(x > 0 for x in v)),
    "data.augment.crop_padding": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "data.augment.hflip": ("true or false", lambda v: isinstance(v, bool)),
    "data.augment.rotate_degrees": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "data.format": ("'image_store' or 'imagenet_index'", lambda v: v in ("image_store", "imagenet_index")),
    "data.image_size": ("an integer >= 1 (the training crop)", lambda v: _is_int(v) and v >= 1),
    "arch.family": ("'wrn', 'timm' or 'edm_encoder'", lambda v: v in ("wrn", "timm", "edm_encoder")),
    "attack.eps": ("a number in (0, 1] (a fraction of 1, e.g. 0.031372549 for 8/255)", lambda v: _is_number(v) and 0 < v <= 1),
    "attack.step": ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    "attack.steps": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "objective.name": ("'trades', 'pgd_at' or 'standard'", lambda v: v in ("trades", "pgd_at", "standard")),
    "objective.label_smoothing": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "dra": ("null or a mapping", lambda v: v is None or isinstance(v, dict)),
    "optimizer.name": ("'sgd' or 'lion'", lambda v: v in ("sgd", "lion")),
    "optimizer.lr": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "optimizer.weight_decay": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "schedule.name": ("'dmat_onecycle' or 'cosine'", lambda v: v in ("dmat_onecycle", "cosine")),
    "schedule.warmup_fraction": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "ema.tau": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "ema.warmup_fraction": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "batch_size": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "epochs": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "accumulation_steps": ("an integer >= 1 (micro-batches per GPU per optimizer step)", lambda v: _is_int(v) and v >= 1),
    "precision.bf16": ("true or false", lambda v: isinstance(v, bool)),
    "precision.channels_last": ("true or false", lambda v: isinstance(v, bool)),
    "precision.compile": ("true or false", lambda v: isinstance(v, bool)),
    "checkpoint.every_steps": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "checkpoint.select": ("'last' or 'best_val'", lambda v: v in ("last", "best_val")),
    "validation.every_epochs": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "validation.attack_steps": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
}

_CONDITIONAL_CHECKS: dict[str, tuple[Callable[[dict], bool], str, Callable[[Any], bool]]] = {
    "objective.beta": (lambda r: r["objective"]["name"] == "trades", "a number >= 0 (TRADES' beta, DM-AT: 5.0)",
                       lambda v: _is_number(v) and v >= 0),
    "optimizer.momentum": (lambda r: r["optimizer"]["name"] == "sgd", "a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "optimizer.nesterov": (lambda r: r["optimizer"]["name"] == "sgd", "true or false", lambda v: isinstance(v, bool)),
    "optimizer.betas": (lambda r: r["optimizer"]["name"] == "lion", "a list of 2 numbers in [0, 1)",
                        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)),
    "arch.depth": (lambda r: r["arch"]["family"] == "wrn", "an integer 6n + 4 (e.g. 28)", lambda v: _is_int(v) and v >= 10 and (v - 4) % 6 == 0),
    "arch.width": (lambda r: r["arch"]["family"] == "wrn", "an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "arch.name": (lambda r: r["arch"]["family"] == "timm", "a timm model name", lambda v: isinstance(v, str) and v != ""),
    "arch.network": (lambda r: r["arch"]["family"] == "edm_encoder", "the diffusion model's network json",
                     lambda v: isinstance(v, str) and v != ""),
    "arch.layer": (lambda r: r["arch"]["family"] == "edm_encoder", "a U-Net block, e.g. model.dec.8x8_in1",
                   lambda v: isinstance(v, str) and v.startswith("model.")),
    "arch.sigma": (lambda r: r["arch"]["family"] == "edm_encoder", "a positive noise level",
                   lambda v: _is_number(v) and v > 0),
    "dra.lambda": (lambda r: r["dra"] is not None, "a number >= 0 (paper: 1.2)", lambda v: _is_number(v) and v >= 0),
    "dra.head_hidden": (lambda r: r["dra"] is not None, "an integer >= 1 (REPA: 2048)", lambda v: _is_int(v) and v >= 1),
    "dra.head_layers": (lambda r: r["dra"] is not None, "an integer >= 1 (REPA: 3)", lambda v: _is_int(v) and v >= 1),
    "dra.target": (lambda r: r["dra"] is not None, "'stored' or 'online'", lambda v: v in ("stored", "online")),
    "dra.features.real": (lambda r: r["dra"] is not None and r["dra"].get("target") == "stored",
                          "the path of the feature store of the training images", lambda v: isinstance(v, str) and v != ""),
    "dra.features.synthetic": (lambda r: r["dra"] is not None and r["dra"].get("target") == "stored" and r["data"]["synthetic"] is not None,
                               "the path of the feature store of the synthetic images (data.synthetic is set)",
                               lambda v: isinstance(v, str) and v != ""),
    "dra.diffusion.checkpoint": (lambda r: r["dra"] is not None and r["dra"].get("target") == "online",
                                 "the path of the diffusion checkpoint", lambda v: isinstance(v, str) and v != ""),
    "dra.diffusion.layer": (lambda r: r["dra"] is not None and r["dra"].get("target") == "online",
                            "the name of the diffusion layer", lambda v: isinstance(v, str) and v != ""),
    "dra.diffusion.sigma": (lambda r: r["dra"] is not None and r["dra"].get("target") == "online",
                            "a number > 0", lambda v: _is_number(v) and v > 0),
    "dra.diffusion.extra_view": (lambda r: r["dra"] is not None and r["dra"].get("target") == "online",
                                 "true or false", lambda v: isinstance(v, bool)),
}


def validate_recipe(recipe: Any, source: str = "recipe") -> dict:
    """Return `recipe` unchanged if it is complete and well-typed; raise RecipeError otherwise."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source}: expected a mapping at the top level, got {type(recipe).__name__}")
    checks = list(_CHECKS.items())
    checks += [(key, (expected, check)) for key, (applies, expected, check) in _CONDITIONAL_CHECKS.items()
               if applies(recipe)]
    for key, (expected, check) in checks:
        value = _lookup(recipe, key)
        if value is _MISSING:
            raise RecipeError(f"{source}: key '{key}' is missing; expected {expected}")
        if not check(value):
            raise RecipeError(f"{source}: key '{key}' = {value!r}; expected {expected}")
    if recipe["checkpoint"]["select"] == "best_val" and recipe["data"]["val_size"] == 0:
        raise RecipeError(f"{source}: key 'checkpoint.select' = 'best_val' needs validation images; "
                          "set data.val_size > 0 or checkpoint.select: last")
    return recipe


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; it is written by the resolve_recipe rule")
    return validate_recipe(read_yaml(path), source=f"recipe {path}")
