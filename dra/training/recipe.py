"""Read and validate the resolved recipe (docs/architecture.md, "The resolved recipe").

Every problem stops with one RecipeError naming the key, what was expected and what was found,
so a wrong config entry is fixed where it was written instead of failing hours into a run. The
recipe's shape is one JSON schema beside the configuration's (config/schema.yaml,
$defs/resolved_recipe), whose names and per-name keys come from the registries (dra.registry).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema

from dra.config import load_schema
from dra.io import read_yaml
from dra.registry import generation


class RecipeError(ValueError):
    pass


@functools.lru_cache(maxsize=1)
def _validator(registries: int) -> tuple[jsonschema.protocols.Validator, dict[str, str]]:
    """The resolved recipe's JSON schema (config/schema.yaml, $defs/resolved_recipe, with the registries'
    names filled in) and what each key holds (its description), by dotted key; `registries`: the
    registries' generation, so that a name registered at run time is known."""
    schema = load_schema()
    recipe_schema = {**schema["$defs"]["resolved_recipe"], "$defs": schema["$defs"]}
    return jsonschema.Draft202012Validator(recipe_schema), _descriptions(recipe_schema, schema)


def _descriptions(node: Any, root: dict, prefix: str = "") -> dict[str, str]:
    """Dotted key -> description, through properties, $ref and the if/then of per-name keys."""
    found: dict[str, str] = {}
    if not isinstance(node, dict):
        return found
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        found.update(_descriptions(target, root, prefix))
    if prefix and "description" in node:
        found[prefix] = node["description"]
    for key, child in node.get("properties", {}).items():
        for name, text in _descriptions(child, root, f"{prefix}.{key}" if prefix else key).items():
            found.setdefault(name, text)
    for rule in node.get("allOf", []):
        for name, text in _descriptions(rule.get("then", {}), root, prefix).items():
            found.setdefault(name, text)
    return found


def _key(path: Any) -> str:
    return ".".join(str(part) for part in path)


def _message(error: jsonschema.ValidationError, descriptions: dict[str, str], source: str) -> str:
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        path, schema = [*error.absolute_path, missing], error.schema.get("properties", {}).get(missing, {})
        # a missing mapping is named by its first required key ('dra.features.real', not 'dra.features')
        while isinstance(schema, dict) and schema.get("required") and "properties" in schema:
            path.append(schema["required"][0])
            schema = schema["properties"].get(schema["required"][0], {})
        key = _key(path)
        expected = descriptions.get(key, "a value (config/schema.yaml, $defs/resolved_recipe)")
        return f"{source}: key '{key}' is missing; expected {expected}"
    key = _key(error.absolute_path) or "(top level)"
    expected = descriptions.get(key)
    return f"{source}: key '{key}' = {error.instance!r}; " + (f"expected {expected}" if expected else error.message)


def validate_recipe(recipe: Any, source: str = "recipe") -> dict:
    """Return `recipe` unchanged if it is complete and well-typed; raise RecipeError otherwise.

    The shape is the JSON schema's ($defs/resolved_recipe of config/schema.yaml); what a schema
    cannot say is checked after it."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source}: expected a mapping at the top level, got {type(recipe).__name__}")
    validator, descriptions = _validator(generation())
    errors = sorted(validator.iter_errors(recipe),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # the shallowest first: a missing or wrong mapping before what it would hold
        raise RecipeError(_message(errors[0], descriptions, source))
    arch = recipe["arch"]
    if arch["family"] == "wrn" and (arch["depth"] - 4) % 6 != 0:  # 6n + 4: no JSON schema keyword says it
        raise RecipeError(f"{source}: key 'arch.depth' = {arch['depth']!r}; expected {descriptions['arch.depth']}")
    if recipe["checkpoint"]["select"] == "best_val" and recipe["data"]["val_size"] == 0:
        raise RecipeError(f"{source}: key 'checkpoint.select' = 'best_val' needs validation images; "
                          "set data.val_size > 0 or checkpoint.select: last")
    return recipe


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; it is written by the resolve_recipe rule")
    return validate_recipe(read_yaml(path), source=f"recipe {path}")
