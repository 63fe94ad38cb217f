"""`validate_config`: the JSON schema config/schema.yaml (its names and per-name keys filled from the
registries, its messages naming the key), then what a schema cannot say, in order: references
between sections, downloads, sizes and ranges, duplicate rows and the GPU plan of every cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from dra.config.cells import figure_cells, table_cells, table_kind
from dra.config.core import HOW_TO_FIX, ConfigError, _require
from dra.config.downloads import _check_downloads, is_random
from dra.config.files import _SAFE_LOADER
from dra.config.recipe import train_plan
from dra.config.sizes import _check_cell, _check_duplicate_rows, _check_figures, _check_sizes_and_ranges
from dra.network_presets import EDM_CIFAR10_DDPMPP
from dra.registry import MODEL_FAMILIES, OBJECTIVES, OPTIMIZERS, SCHEDULES, TABLE_KINDS, RegistryError


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def _key_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _branch_errors(error: jsonschema.ValidationError) -> list[list[jsonschema.ValidationError]]:
    """A oneOf/anyOf error's sub-errors, grouped by the branch they belong to."""
    branches: dict[Any, list] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    return list(branches.values())


def _intended_branch(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The branch of a oneOf the user meant: the one the value misses least. An EDM feature
    {layer: model.dec.x, sigma: 0} breaks one rule of the EDM branch and three of the LightningDiT
    one, so the message is about sigma, not about layer being no integer."""

    def distance(errors):
        wrong_type = any(e.validator == "type" and not e.relative_path for e in errors)
        return (wrong_type, len(errors), -max(len(e.absolute_path) for e in errors))

    return min(_branch_errors(error), key=distance)


def _schema_error_message(error: jsonschema.ValidationError) -> str:
    while error.context:
        error = max(_intended_branch(error), key=lambda e: len(e.absolute_path))
    key = _key_path(error.absolute_path)
    # a rule of config/schema.yaml may say what it asks in its own words (`errorMessage`, as ajv-errors
    # spells it): a source kind's own keys; a missing key is then named itself
    said = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    if error.validator == "required" and said:
        missing = next(name for name in error.validator_value if name not in error.instance)
        return f"config key {_key_path([*error.absolute_path, missing])}: {said}. {HOW_TO_FIX}"
    if said:
        return f"config key {key}: {said}. {HOW_TO_FIX}"
    if error.validator == "additionalProperties":
        return f"config key {key}: {error.message} (a misspelt or unknown key). {HOW_TO_FIX}"
    return f"config key {key}: {error.message}. {HOW_TO_FIX}"


def _per_name_requirements(registry, key: str = "required", discriminator: str = "name") -> list[dict]:
    """JSON schema: an object whose `discriminator` is a registered name carries the keys that name's
    registration requires (metadata `key`: {key: its schema}), in the order the registration lists them."""
    rules = []
    for name in registry.names():
        required = registry.meta(name).get(key) or {}
        if required:
            rules.append({"if": {"properties": {discriminator: {"const": name}}, "required": [discriminator]},
                          "then": {"required": list(required), "properties": dict(required)}})
    return rules


def _names_schema(registry) -> dict:
    names = registry.names()
    return {"type": "string", "enum": names,
            "description": f"a registered {registry.kind}: " + _one_of_names(names)}


def _one_of_names(names: list[str]) -> str:
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def load_schema() -> dict:
    """config/schema.yaml with the names it allows read from the registries (dra.registry): model
    families, objectives, optimizers, schedules and table kinds, and the keys a name brings along
    (a family's own arch keys, an optimizer's required keys). The YAML carries no copy of them."""
    schema = yaml.load(SCHEMA_PATH.read_text(), Loader=_SAFE_LOADER)
    defs = schema["$defs"]
    arch = defs["arch"]["properties"]
    arch["family"]["enum"] = MODEL_FAMILIES.names()
    arch.update(family_keys())
    defs["method"]["properties"]["objective"]["enum"] = OBJECTIVES.names()
    optimizer = defs["recipe"]["properties"]["optimizer"]
    optimizer["properties"]["name"]["enum"] = OPTIMIZERS.names()
    optimizer["allOf"] = _per_name_requirements(OPTIMIZERS)
    defs["recipe"]["properties"]["schedule"]["properties"]["name"]["enum"] = SCHEDULES.names()
    for table in schema["properties"]["tables"]["patternProperties"].values():
        table["properties"]["kind"]["enum"] = TABLE_KINDS.names()
    resolved = defs["resolved_recipe"]["properties"]
    resolved["arch"]["properties"]["family"] = _names_schema(MODEL_FAMILIES)
    resolved["arch"]["allOf"] = _per_name_requirements(MODEL_FAMILIES, "recipe_keys", "family")
    resolved["objective"]["properties"]["name"] = _names_schema(OBJECTIVES)
    resolved["objective"]["allOf"] = _per_name_requirements(OBJECTIVES)
    optimizer["properties"]["name"]["description"] = _names_schema(OPTIMIZERS)["description"]
    schedule = defs["recipe"]["properties"]["schedule"]["properties"]["name"]
    schedule["description"] = _names_schema(SCHEDULES)["description"]
    return json_ready(schema)


def family_keys() -> dict[str, Any]:
    """The arch keys every model family declares in its registration (metadata `keys`: {key: JSON
    schema}), the one place they are written; an arch entry may carry any of them (its family's
    `required` ones are checked by _check_archs). Two families may share a key with the same schema."""
    keys: dict[str, Any] = {}
    for family in MODEL_FAMILIES.names():
        meta = MODEL_FAMILIES.meta(family)
        declared = meta.get("keys") or {}
        for key, spec in declared.items():
            if key == "family" or keys.setdefault(key, spec) != spec:
                raise RegistryError(f"model family {family!r} declares arch key {key!r} with the schema {spec}, "
                                    f"which another family or the schema's own `family` declares differently; "
                                    "give the key another name in one of them")
        undeclared = [key for key in meta.get("required", ()) if key not in declared]
        if undeclared:
            raise RegistryError(f"model family {family!r} requires arch keys {undeclared} that its `keys` "
                                "metadata does not declare; add their JSON schema there")
    return keys


def json_ready(value: Any) -> Any:
    """Registry metadata as JSON schema reads it: tuples as lists."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def validate_config(config: dict) -> None:
    """Stop with one message naming the key when the configuration is wrong."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(config))
    if errors:
        # best_match would descend into a oneOf by its own rule; _schema_error_message picks the branch
        raise ConfigError(_schema_error_message(max(errors, key=jsonschema.exceptions.relevance)))
    _check_references(config)
    _check_downloads(config)
    _check_sizes_and_ranges(config)
    _check_duplicate_rows(config)
    _check_gpu_plans(config)


def _check_gpu_plans(config: dict) -> None:
    """Every cell fits the configured GPUs (with accumulation), and every other GPU job has a batch
    that fits one GPU (dra.config.jobs.job_plans), before any job starts."""
    from dra.config.jobs import job_plans
    from dra.gpu_plan import PlanError

    for cell in {cell.id: cell for cell in table_cells(config) + figure_cells(config)}.values():
        try:
            train_plan(config, cell)
        except PlanError as error:
            raise ConfigError(f"config keys hardware / resources.train: {error}") from None
    try:
        job_plans(config)
    except PlanError as error:
        raise ConfigError(f"config keys hardware / resources.evaluate, resources.diffusion: {error}") from None



def _check_references(config: dict) -> None:
    """What the schema cannot say about the sections' entries: the names they give each other, and
    counts against other entries (a source kind's own keys are the schema's, $defs/dataset and
    $defs/diffusion_model)."""
    _check_datasets(config)
    _check_diffusion_models(config)
    _check_archs(config)
    _check_table_rows(config)
    _check_figures(config)


def _check_datasets(config: dict) -> None:
    datasets, models = config["datasets"], config["diffusion_models"]
    for name, dataset in datasets.items():
        _require(
            dataset["diffusion"] in models,
            f"datasets.{name}.diffusion",
            f"'{dataset['diffusion']}' is not in diffusion_models (known: {', '.join(models)})",
        )
        source = dataset["source"]
        if source["kind"] == "imagenet_folder" and is_random(source):  # random class folders: one image in each
            for key in ("train_images", "val_images"):
                _require(source[key] >= dataset["num_classes"], f"datasets.{name}.source.{key}",
                         f"{source[key]} random images cannot fill num_classes {dataset['num_classes']} "
                         "class folders; give at least one per class")
        for set_name, spec in dataset["synthetic"].items():
            parts = spec.get("generate", {}).get("parts", 1)
            _require(parts == 1 or models[dataset["diffusion"]]["source"]["kind"] == "lightningdit",
                     f"datasets.{name}.synthetic.{set_name}.generate.parts",
                     "only LightningDiT sets are sampled in parts; an EDM set is one resumable job")
            _require(parts <= spec.get("generate", {}).get("images_per_class", 1) * dataset["num_classes"],
                     f"datasets.{name}.synthetic.{set_name}.generate.parts", "more parts than images")


def _check_diffusion_models(config: dict) -> None:
    datasets, models = config["datasets"], config["diffusion_models"]
    for name, model in models.items():
        source = model["source"]
        if is_random(source) and source["kind"] == "edm_pickle":
            # the random EDM's class labels are the dataset's classes (feature extraction and sampling pass them)
            label_dim = {**EDM_CIFAR10_DDPMPP, **source["random"].get("network", {})}["label_dim"]
            for dataset_name, dataset in datasets.items():
                _require(dataset["diffusion"] != name or dataset["num_classes"] == label_dim,
                         f"diffusion_models.{name}.source.random.network.label_dim",
                         f"{label_dim} labels, but dataset {dataset_name} has num_classes {dataset['num_classes']}; "
                         f"set network: {{label_dim: {dataset['num_classes']}}}")
        if source["kind"] == "noisy_classifier":
            _check_noisy_classifier(config, name)
            # it reads its diffusion model's feature (diffusion_feature): one layer and sigma
            _require("feature" not in model, f"diffusion_models.{name}.feature",
                     f"a noisy classifier has none: it is read at diffusion_models.{source['diffusion']}.feature "
                     "(Section 5.6 changes only the training objective, not the layer or the noise); remove the key")
        if "dataset" in source:
            _require(
                source["dataset"] in datasets,
                f"diffusion_models.{name}.source.dataset",
                f"'{source['dataset']}' is not in datasets",
            )


def _check_archs(config: dict) -> None:
    models = config["diffusion_models"]
    for name, arch in config["archs"].items():
        family = MODEL_FAMILIES.meta(arch["family"])
        for key in family.get("required", ()):
            _require(key in arch, f"archs.{name}.{key}", f"required for family {arch['family']}")
        if arch["family"] == "edm_encoder":
            _require(
                arch["diffusion"] in models and models[arch["diffusion"]]["source"]["kind"] in ("edm_pickle", "train"),
                f"archs.{name}.diffusion",
                f"'{arch['diffusion']}' is not an EDM model of diffusion_models",
            )
            continue
        pretrained = [f for f in MODEL_FAMILIES.names() if MODEL_FAMILIES.meta(f).get("pretrained")]
        _require("pretrained" not in arch or arch["family"] in pretrained, f"archs.{name}.pretrained",
                 f"pretrained weights are read for {', '.join(pretrained)} models only")
        if arch["family"] == "wrn":
            _require((arch["depth"] - 4) % 6 == 0, f"archs.{name}.depth", "a WideResNet depth is 6n+4")


def _check_table_rows(config: dict) -> None:
    for table_name, table in config["tables"].items():
        kind = table_kind(config, table_name)
        paper_keys = TABLE_KINDS.meta(kind)["paper_keys"]
        for index, row in enumerate(table["rows"]):
            key = f"tables.{table_name}.rows[{index}]"
            if "cell" not in row:
                continue
            _check_cell(config, row["cell"], f"{key}.cell")
            if row["paper"] is not None:
                _require(
                    set(row["paper"]) == set(paper_keys),
                    f"{key}.paper",
                    f"the rows of a table of kind {kind} (tables.{table_name}.kind) carry {'/'.join(paper_keys)}",
                )


def _check_noisy_classifier(config: dict, name: str) -> None:
    """Section 5.6: the diffusion model's U-Net, trained as a classifier on the same noisy inputs."""
    models = config["diffusion_models"]
    source = models[name]["source"]
    base = models.get(source["diffusion"])
    _require(
        base is not None and base["source"]["kind"] in ("edm_pickle", "train"),
        f"diffusion_models.{name}.source.diffusion",
        f"'{source['diffusion']}' is not an EDM model of diffusion_models (its U-Net is the architecture)",
    )
