"""The workflow's configuration: validation, cells, paths, and the resolved recipe of a cell.

The Snakefile and the tests share these functions, so a path or a recipe is computed in one
place only. A cell is one trained model of a table, named by its path
``<dataset>/<arch>/<method>/<budget>`` with ``budget = syn<set>-bs<batch>-ep<epochs>`` or
``nosyn-bs<batch>-ep<epochs>``. A replicate of a cell trained with another seed carries the seed
at the end of its budget (``syn2k-bs128-ep30-seed2``); the plain budget is trained with config's
``seed``, so a table that runs one seed names the same paths as before replicates existed.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from dra.diffusion.presets import EDM_CIFAR10_DDPMPP
from dra.registry import MODEL_FAMILIES, OBJECTIVES, OPTIMIZERS, SCHEDULES, TABLE_KINDS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
BUDGET_PATTERN = re.compile(
    r"^(?:syn(?P<synthetic>[0-9a-z]+)|nosyn)-bs(?P<batch>[0-9]+)-ep(?P<epochs>[0-9]+)(?:-seed(?P<seed>[0-9]+))?$"
)
HOW_TO_FIX = ("Fix it in config.yaml, in the overlay given with --configfile or in --config "
              "(keys: config/schema.yaml).")


class ConfigError(ValueError):
    """A configuration mistake, with the key that is wrong and what to do."""


@dataclass(frozen=True)
class Cell:
    dataset: str
    arch: str
    method: str
    budget: str

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.arch}/{self.method}/{self.budget}"

    @property
    def synthetic(self) -> str | None:
        return BUDGET_PATTERN.match(self.budget)["synthetic"]

    @property
    def batch_size(self) -> int:
        return int(BUDGET_PATTERN.match(self.budget)["batch"])

    @property
    def epochs(self) -> int:
        return int(BUDGET_PATTERN.match(self.budget)["epochs"])

    @property
    def seed(self) -> int | None:
        """The training seed of a replicate; None for the plain budget (config's seed)."""
        seed = BUDGET_PATTERN.match(self.budget)["seed"]
        return None if seed is None else int(seed)


def parse_cell(cell_id: str) -> Cell:
    parts = cell_id.strip("/").split("/")
    if len(parts) != 4 or not BUDGET_PATTERN.match(parts[3]):
        raise ConfigError(
            f"cell '{cell_id}' is not <dataset>/<arch>/<method>/<budget> with budget like "
            f"syn1m-bs512-ep400 or nosyn-bs128-ep200. {HOW_TO_FIX}"
        )
    return Cell(*parts)


# ----------------------------------------------------------------------------------------------
# validation


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
    if error.validator == "additionalProperties":
        return f"config key {key}: {error.message} (a misspelt or unknown key). {HOW_TO_FIX}"
    if error.validator == "required":
        return f"config key {key}: {error.message}. {HOW_TO_FIX}"
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
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    defs = schema["$defs"]
    arch = defs["arch"]["properties"]
    arch["family"]["enum"] = MODEL_FAMILIES.names()
    for family in MODEL_FAMILIES.names():
        for key, spec in (MODEL_FAMILIES.meta(family).get("keys") or {}).items():
            arch.setdefault(key, spec)
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
    """Every cell fits the configured GPUs (with accumulation) before any job starts."""
    from dra.gpu_plan import PlanError

    for cell in {cell.id: cell for cell in table_cells(config) + figure_cells(config)}.values():
        try:
            train_plan(config, cell)
        except PlanError as error:
            raise ConfigError(f"config keys hardware / resources.train: {error}") from None


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key {key}: {message}. {HOW_TO_FIX}")


def _check_references(config: dict) -> None:
    datasets, archs = config["datasets"], config["archs"]
    models = config["diffusion_models"]
    for name, dataset in datasets.items():
        _require(
            dataset["diffusion"] in models,
            f"datasets.{name}.diffusion",
            f"'{dataset['diffusion']}' is not in diffusion_models (known: {', '.join(models)})",
        )
        if dataset["source"]["kind"] in ("cifar10", "cifar100"):
            if is_random(dataset["source"]):
                for key in ("train_images", "test_images"):
                    _require(key in dataset["source"]["random"], f"datasets.{name}.source.random.{key}",
                             "the size of the random archive's split (CIFAR's are 50000 and 10000)")
            else:
                _require(_has(dataset["source"], "url"), f"datasets.{name}.source.url",
                         "the archive's download URL is required (CIFAR's archives are not on the Hub)")
        if dataset["source"]["kind"] == "imagenet_folder":
            for key in ("path", "train_images", "val_images", "eval_ids"):
                _require(key in dataset["source"], f"datasets.{name}.source.{key}", "required for an ImageNet folder")
            if is_random(dataset["source"]):  # random class folders: at least one image in each
                for key in ("train_images", "val_images"):
                    _require(dataset["source"][key] >= dataset["num_classes"], f"datasets.{name}.source.{key}",
                             f"{dataset['source'][key]} random images cannot fill num_classes {dataset['num_classes']} "
                             "class folders; give at least one per class")
        if dataset["source"]["kind"] == "sklearn_digits":
            _require(not is_random(dataset["source"]), f"datasets.{name}.source.random",
                     "the digits ship with scikit-learn; they have no random source")
    for name, dataset in datasets.items():
        for set_name, spec in dataset["synthetic"].items():
            parts = spec.get("generate", {}).get("parts", 1)
            _require(parts == 1 or models[dataset["diffusion"]]["source"]["kind"] == "lightningdit",
                     f"datasets.{name}.synthetic.{set_name}.generate.parts",
                     "only LightningDiT sets are sampled in parts; an EDM set is one resumable job")
            _require(parts <= spec.get("generate", {}).get("images_per_class", 1) * dataset["num_classes"],
                     f"datasets.{name}.synthetic.{set_name}.generate.parts", "more parts than images")
    for name, model in models.items():
        source = model["source"]
        is_edm = source["kind"] in ("edm_pickle", "train", "noisy_classifier")
        # a noisy classifier reads its diffusion model's feature (diffusion_feature): one layer and sigma
        is_noisy = source["kind"] == "noisy_classifier"
        _require(
            ("feature" in model) != is_noisy,
            f"diffusion_models.{name}.feature",
            f"a noisy classifier has none: it is read at diffusion_models.{source.get('diffusion')}.feature (Section "
            "5.6 changes only the training objective, not the layer or the noise); remove the key"
            if is_noisy else "required: the layer (and sigma, or t and zero_channels) of the DRA target",
        )
        _require(
            is_noisy or is_edm == isinstance(model["feature"]["layer"], str),
            f"diffusion_models.{name}.feature",
            "an EDM model takes {layer: model.dec.<block>, sigma}, a LightningDiT {layer: <block>, t, zero_channels}",
        )
        if source["kind"] in ("edm_pickle", "train"):
            _require("validation" in model, f"diffusion_models.{name}.validation", "required for an EDM model")
        # the LightningDiT sampler's settings; an EDM set's Heun sampler takes only the set's num_steps
        _require(("sampling" in model) == (source["kind"] == "lightningdit"), f"diffusion_models.{name}.sampling",
                 "required for a LightningDiT model ({timestep_shift, cfg_scale, cfg_interval_start, cfg_channels}) "
                 "and for no other")
        _require(not is_random(source) or source["kind"] in ("edm_pickle", "lightningdit"),
                 f"diffusion_models.{name}.source.random",
                 f"kind {source['kind']} is trained by the workflow; only downloads (edm_pickle, lightningdit) "
                 "have a random source")
        if is_random(source) and source["kind"] == "edm_pickle":
            # the random EDM's class labels are the dataset's classes (feature extraction and sampling pass them)
            label_dim = {**EDM_CIFAR10_DDPMPP, **source["random"].get("network", {})}["label_dim"]
            for dataset_name, dataset in datasets.items():
                _require(dataset["diffusion"] != name or dataset["num_classes"] == label_dim,
                         f"diffusion_models.{name}.source.random.network.label_dim",
                         f"{label_dim} labels, but dataset {dataset_name} has num_classes {dataset['num_classes']}; "
                         f"set network: {{label_dim: {dataset['num_classes']}}}")
        if source["kind"] == "lightningdit":
            _require(_has(source, "url") or _has(source, "hf"), f"diffusion_models.{name}.source.hf",
                     "the checkpoint's hf: {repo, type, path, revision} (or url) is required for LightningDiT")
            for key in ("tokenizer", "latent_stats"):
                _require(key in source, f"diffusion_models.{name}.source.{key}", "required for LightningDiT")
        elif source["kind"] == "edm_pickle":
            _require(_has(source, "url") or _has(source, "hf"), f"diffusion_models.{name}.source.url",
                     "the pickle's download url (or hf: {repo, type, path, revision}) is required")
        elif source["kind"] == "train":
            for key in ("dataset", "network", "training"):
                _require(key in source, f"diffusion_models.{name}.source.{key}", "required when kind is train")
            _require(
                "ema_half_life_images" in source["training"],
                f"diffusion_models.{name}.source.training.ema_half_life_images",
                "required when kind is train",
            )
        else:
            _check_noisy_classifier(config, name)
        if "dataset" in source:
            _require(
                source["dataset"] in datasets,
                f"diffusion_models.{name}.source.dataset",
                f"'{source['dataset']}' is not in datasets",
            )
    for name, arch in archs.items():
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
    _check_figures(config)


def _check_noisy_classifier(config: dict, name: str) -> None:
    """Section 5.6: the diffusion model's U-Net, trained as a classifier on the same noisy inputs."""
    models = config["diffusion_models"]
    source = models[name]["source"]
    key = f"diffusion_models.{name}.source"
    for needed in ("dataset", "diffusion", "training"):
        _require(needed in source, f"{key}.{needed}", "required when kind is noisy_classifier")
    base = models.get(source["diffusion"])
    _require(
        base is not None and base["source"]["kind"] in ("edm_pickle", "train"),
        f"{key}.diffusion",
        f"'{source['diffusion']}' is not an EDM model of diffusion_models (its U-Net is the architecture)",
    )


# ----------------------------------------------------------------------------------------------
# downloads


def _has(entry: dict, key: str) -> bool:
    # an overlay switching an entry from hf to url (or back) sets the other one to null
    return entry.get(key) is not None


def is_random(entry: dict | None) -> bool:
    """Whether a source or download entry is replaced by random content (the canary's `random:`)."""
    return isinstance(entry, dict) and entry.get("random") is not None


def download_entries(config: dict) -> list[tuple[str, dict]]:
    """Every configured download as (config key, entry), in config order; entries the canary
    replaces by random content (`random:`) download nothing."""
    entries = []
    for name, dataset in config["datasets"].items():
        if (_has(dataset["source"], "url") or _has(dataset["source"], "hf")) and not is_random(dataset["source"]):
            entries.append((f"datasets.{name}.source", dataset["source"]))
        for set_name, spec in dataset["synthetic"].items():
            for index, part in enumerate(spec.get("parts", [])):
                if not is_random(part):
                    entries.append((f"datasets.{name}.synthetic.{set_name}.parts[{index}]", part))
    for name, model in config["diffusion_models"].items():
        source = model["source"]
        if is_random(source):
            continue
        if _has(source, "url") or _has(source, "hf"):
            entries.append((f"diffusion_models.{name}.source", source))
        for key in ("tokenizer", "latent_stats"):
            if key in source:
                entries.append((f"diffusion_models.{name}.source.{key}", source[key]))
    for name, arch in config["archs"].items():
        if "pretrained" in arch and not is_random(arch["pretrained"]):
            entries.append((f"archs.{name}.pretrained", arch["pretrained"]))
    for name, model in config["reference_models"]["models"].items():
        for key in ("checkpoint", "args"):
            entries.append((f"reference_models.models.{name}.{key}", model[key]))
    return entries


def download_fields(entry: dict) -> dict:
    """What dra.download.fetch needs of an entry: its source (url or hf) and its checksums."""
    return {key: entry[key] for key in ("url", "hf", "sha256", "md5") if entry.get(key) is not None}


def download_name(entry: dict) -> str:
    """The file name of a download: the last part of its URL (without a query) or Hub path."""
    if _has(entry, "hf"):
        return entry["hf"]["path"].rsplit("/", 1)[-1]
    return entry["url"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _source_id(entry: dict) -> str:
    if _has(entry, "hf"):
        hf = entry["hf"]
        return f"hf://{hf['type']}/{hf['repo']}/{hf['path']}"
    return entry["url"]


def _check_downloads(config: dict) -> None:
    seen: dict[str, str] = {}
    for key, entry in download_entries(config):
        _require(_has(entry, "url") != _has(entry, "hf"), key,
                 "give exactly one of url (a plain download) or hf: {repo, type, path, revision} (a Hugging Face "
                 "file); an overlay that switches an entry from one to the other sets the other to null")
        source = _source_id(entry)
        _require(source not in seen, key,
                 f"downloads {source}, which {seen.get(source)} downloads too: two entries must name two files "
                 "(a copied line whose path was not changed?)")
        seen[source] = key
        _require(bool(download_name(entry)), key, f"{source} names no file")


def check_download_lock(config: dict, lock_path: str | Path) -> None:
    """Before the first job: the lock file (config/data/downloads.lock.yaml) and the config must
    agree wherever both pin a file (a sha256, or a Hub commit written into the config)."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return
    locked = load_config_file(lock_path)
    for key, entry in download_entries(config):
        recorded = locked.get(_source_id(entry))
        if not recorded:
            continue
        sha256 = entry.get("sha256")
        _require(sha256 is None or sha256 == recorded.get("sha256"), f"{key}.sha256",
                 f"{sha256} disagrees with {lock_path}, which recorded {recorded.get('sha256')} for "
                 f"{_source_id(entry)} at its first download; correct the config, or delete the lock entry if the "
                 "file has changed on purpose")
        revision = entry["hf"]["revision"] if _has(entry, "hf") else None
        if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
            _require(revision == recorded.get("revision"), f"{key}.hf.revision",
                     f"commit {revision} disagrees with {lock_path}, which pinned {recorded.get('revision')}; make "
                     "them agree (delete the lock entry to take the config's commit)")


# ----------------------------------------------------------------------------------------------
# sizes and ranges that the schema cannot express


# training and test images of the datasets the workflow reads itself: CIFAR-10/100 (Krizhevsky 2009,
# "Learning Multiple Layers of Features from Tiny Images": 50,000 + 10,000), the digits' fixed split
# (dra.data.digits: 1297 + 500). ImageNet's come from its source entry and the evaluation ids.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "sklearn_digits": (1297, 500)}


def split_sizes(config: dict, dataset: str) -> tuple[int | None, int | None]:
    """(training images, test images) of a dataset, None where it is not known before a job."""
    source = config["datasets"][dataset]["source"]
    if is_random(source) and source["kind"] in ("cifar10", "cifar100"):
        return source["random"]["train_images"], source["random"]["test_images"]
    if is_random(source) and source["kind"] == "imagenet_folder":
        return source["train_images"], source["val_images"]  # every random validation image is evaluated
    if source["kind"] in SPLIT_SIZES:
        return SPLIT_SIZES[source["kind"]]
    ids = Path(source.get("eval_ids", ""))
    test = sum(1 for line in ids.read_text().splitlines() if line.strip()) if ids.is_file() else None
    return source.get("train_images"), test


def _check_sizes_and_ranges(config: dict) -> None:
    datasets = config["datasets"]
    for name, dataset in datasets.items():
        train, test = split_sizes(config, name)
        key = f"datasets.{name}"
        if train is not None:
            _require(dataset["val_size"] < train, f"{key}.val_size",
                     f"{dataset['val_size']} held-out images leave none of the {train} training images to train on; "
                     f"use fewer than {train} (DM-AT holds out 1024 of CIFAR's 50,000)")
        if test is not None:
            _require(dataset["eval_n"] <= test, f"{key}.eval_n",
                     f"{dataset['eval_n']} is more than the {test} test images; use at most {test}")
        _require(dataset["augment"]["crop_padding"] < dataset["image_size"], f"{key}.augment.crop_padding",
                 f"{dataset['augment']['crop_padding']} is not smaller than image_size {dataset['image_size']}")
    for name, model in config["diffusion_models"].items():
        validation = model.get("validation")
        if validation is None:
            continue
        for dataset in (d for d, spec in datasets.items() if spec["diffusion"] == name):
            train, test = split_sizes(config, dataset)
            for split, size in (("train_n", train), ("test_n", test)):
                if size is not None:
                    _require(validation[split] <= size, f"diffusion_models.{name}.validation.{split}",
                             f"{validation[split]} is more than the {size} images of dataset {dataset}; "
                             f"use at most {size}")
    for dataset, archs in config["recipes"].items():
        _require(dataset in datasets, f"recipes.{dataset}",
                 f"'{dataset}' is not in datasets (known: {', '.join(datasets)})")
        for arch, recipe in archs.items():
            key = f"recipes.{dataset}.{arch}"
            _require(arch in config["archs"], key, f"'{arch}' is not in archs (known: {', '.join(config['archs'])})")
            attack, eps_255 = recipe["attack"], datasets[dataset]["eps_255"]
            _require(attack["step_255"] <= eps_255, f"{key}.attack.step_255",
                     f"a PGD step of {attack['step_255']}/255 is larger than the budget datasets.{dataset}.eps_255 "
                     f"{eps_255}; DM-AT steps eps/4 (2/255 for 8/255)")
    evaluated = {
        "classification_dimension.eval_n": (config["classification_dimension"]["eval_n"],
                                            {c.dataset for c in table_cells(
                                                config, tables_of_kind(config, "classification_dimension"))}),
        "figures.eval_n": (config["figures"]["eval_n"],
                           {model_dataset(config, m) for m in figure_models(config)}),
    }
    for key, (n, used) in evaluated.items():
        for dataset in sorted(used & set(datasets)):
            _, test = split_sizes(config, dataset)
            if test is not None:
                _require(n <= test, key,
                         f"{n} is more than the {test} test images of dataset {dataset}; use at most {test}")
    figures = config["figures"]
    if "figure1_models" in figures:  # CKNNA (Figures 1, 9): k neighbours of a point among the other eval_n - 1
        _require(figures["cknna_topk"] < figures["eval_n"], "figures.cknna_topk",
                 f"{figures['cknna_topk']} neighbours need more than eval_n {figures['eval_n']} points; use fewer")


def _check_duplicate_rows(config: dict) -> None:
    for table_name, table in config["tables"].items():
        rows: dict[str, int] = {}
        for index, row in enumerate(table["rows"]):
            if "cell" not in row:
                continue
            _require(row["cell"] not in rows, f"tables.{table_name}.rows[{index}].cell",
                     f"{row['cell']} is rows[{rows.get(row['cell'])}] already; a table holds each cell once "
                     "(with one set of paper numbers): delete one of the two rows")
            rows[row["cell"]] = index


def dra_target_model(config: dict, dataset: str, target: str) -> str:
    """The diffusion_models entry whose features a DRA method aligns to: the dataset's diffusion
    model ('diffusion'), or the noisy classifier built on it ('noisy_classifier', Section 5.6)."""
    diffusion = config["datasets"][dataset]["diffusion"]
    if target == "diffusion":
        return diffusion
    found = [
        name
        for name, model in config["diffusion_models"].items()
        if model["source"]["kind"] == "noisy_classifier"
        and model["source"].get("diffusion") == diffusion
        and model["source"].get("dataset") == dataset
    ]
    if len(found) != 1:
        raise ConfigError(
            f"config key diffusion_models: a method with dra_target: noisy_classifier on dataset '{dataset}' needs "
            f"exactly one entry with source {{kind: noisy_classifier, dataset: {dataset}, diffusion: {diffusion}}}; "
            f"found {found or 'none'}. {HOW_TO_FIX}"
        )
    return found[0]


def _check_cell(config: dict, cell_id: str, key: str) -> Cell:
    """A cell named in a table or a figure: every part of its path must be configured."""
    datasets, archs, methods = config["datasets"], config["archs"], config["methods"]
    cell = parse_cell(cell_id)
    _require(cell.dataset in datasets, key, f"dataset '{cell.dataset}' is not in datasets")
    _require(cell.arch in archs, key, f"arch '{cell.arch}' is not in archs (known: {', '.join(archs)})")
    _require(cell.method in methods, key, f"method '{cell.method}' is not in methods (known: {', '.join(methods)})")
    _require(
        cell.arch in config["recipes"].get(cell.dataset, {}),
        f"recipes.{cell.dataset}.{cell.arch}",
        f"no recipe for cell {cell.id}",
    )
    if methods[cell.method]["dra"]:
        dra_target_model(config, cell.dataset, methods[cell.method].get("dra_target", "diffusion"))
        _require(config["dra"]["target"] == "stored" or uses_edm(config, cell.dataset), "dra.target",
                 f"online targets are computed from EDM U-Nets; cell {cell.id} aligns to LightningDiT, whose "
                 "features are stored (set dra.target: stored)")
    wants_synthetic = methods[cell.method]["synthetic"]
    _require(
        wants_synthetic == (cell.synthetic is not None),
        key,
        f"method '{cell.method}' {'needs' if wants_synthetic else 'uses no'} synthetic data, "
        f"but the budget is '{cell.budget}'",
    )
    if cell.synthetic is not None:
        _require(
            cell.synthetic in datasets[cell.dataset]["synthetic"],
            key,
            f"synthetic set '{cell.synthetic}' is not in datasets.{cell.dataset}.synthetic "
            f"(known: {', '.join(datasets[cell.dataset]['synthetic'])})",
        )
    schedule = config["recipes"][cell.dataset][cell.arch]["schedule"]
    # PyTorch's OneCycleLR divides by zero when the warm-up is exactly one of its steps
    _require(
        schedule["name"] != "dmat_onecycle" or abs(schedule["warmup_fraction"] * cell.epochs - 1) > 1e-9,
        f"recipes.{cell.dataset}.{cell.arch}.schedule.warmup_fraction",
        f"warmup_fraction x epochs is exactly 1 for cell {cell.id}, which OneCycleLR (stepped per epoch) "
        "cannot schedule; change the epochs or the warm-up fraction",
    )
    return cell


REFERENCE_PREFIX = "reference/"


def _check_figure_model(config: dict, model: str, key: str) -> str:
    """A figure's model is a cell path or reference/<name> of reference_models; returns its dataset."""
    if model.startswith(REFERENCE_PREFIX):
        name = model.removeprefix(REFERENCE_PREFIX)
        known = config["reference_models"]["models"]
        _require(name in known, key, f"'{name}' is not in reference_models.models (known: {', '.join(known)})")
        return known[name]["dataset"]
    return _check_cell(config, model, key).dataset


def _check_figures(config: dict) -> None:
    figures = config["figures"]
    datasets = {}
    for key in ("standard", "adversarial"):
        if key in figures:
            datasets[key] = _check_figure_model(config, figures[key], f"figures.{key}")
    _require(
        len(set(datasets.values())) <= 1,
        "figures.standard",
        f"the ST and AT models of Figures 3, 4 and 9 must share a dataset (the diffusion model's); got {datasets}",
    )
    for key in ("figure1_models", "figure5_models", "figure6_models", "figure8_models"):
        for index, model in enumerate(figures.get(key, [])):
            _check_figure_model(config, model, f"figures.{key}[{index}]")
    if "figure8_models" in figures:
        _require(len(figures["figure8_models"]) != 1, "figures.figure8_models",
                 f"a sweep needs two strengths or more, not {figures['figure8_models']}; [] leaves Figure 8 out")
        baseline = _check_cell(config, figures.get("figure8_baseline", ""), "figures.figure8_baseline")
        for index, model in enumerate(figures["figure8_models"]):
            cell = parse_cell(model)
            _require(
                config["methods"][cell.method]["dra"],
                f"figures.figure8_models[{index}]",
                f"Figure 8 sweeps the DRA strength, but method '{cell.method}' has dra: false",
            )
            _require(
                cell.dataset == baseline.dataset,
                f"figures.figure8_models[{index}]",
                f"dataset '{cell.dataset}' differs from the baseline's '{baseline.dataset}'",
            )
    for index, pair in enumerate(figures.get("figure10_pairs", [])):
        key = f"figures.figure10_pairs[{index}]"
        aligned = _check_cell(config, pair["aligned"], f"{key}.aligned")
        baseline = _check_cell(config, pair["baseline"], f"{key}.baseline")
        _require(aligned.dataset == baseline.dataset, key, "the two cells of a difference map must share a dataset")


# ----------------------------------------------------------------------------------------------
# cells and paths


def results_dir(config: dict) -> str:
    return f"results/{config['scale']}"


def table_seeds(config: dict, table: str) -> list[int]:
    """The training seeds of a table's cells: config's seed, then the next ``tables.<t>.seeds - 1``."""
    return [config["seed"] + k for k in range(config["tables"][table].get("seeds", 1))]


def replicate(config: dict, cell: Cell, seed: int) -> Cell:
    """A cell trained with ``seed``: the plain path for config's seed, ``<budget>-seed<seed>`` else."""
    if seed == config["seed"]:
        return cell
    return Cell(cell.dataset, cell.arch, cell.method, f"{cell.budget}-seed{seed}")


def cell_replicates(config: dict, cell_id: str) -> list[Cell]:
    """A cell and its replicates: the seeds of the table listing it with the most (a figure plots
    the spread of the replicates the tables run; one seed for a cell no table lists)."""
    counts = [len(table_seeds(config, name)) for name, table in config["tables"].items()
              if any(row.get("cell") == cell_id for row in table["rows"])]
    seeds = [config["seed"] + k for k in range(max(counts, default=1))]
    return [replicate(config, parse_cell(cell_id), seed) for seed in seeds]


# a table that names no kind compares accuracies (Tables 1 and 2, the ablations, the replicates)
DEFAULT_TABLE_KIND = "accuracy"


def table_kind(config: dict, table: str) -> str:
    """What a table compares (tables.<t>.kind, a dra.registry.TABLE_KINDS name)."""
    return config["tables"][table].get("kind", DEFAULT_TABLE_KIND)


def tables_of_kind(config: dict, kind: str) -> list[str]:
    return [name for name in config["tables"] if table_kind(config, name) == kind]


def table_result_files(config: dict, table: str) -> list[str]:
    """The files a table reads of each of its cells (relative to the cell's folder): its rule's inputs."""
    return list(TABLE_KINDS.meta(table_kind(config, table))["result_files"])


def table_cells(config: dict, tables: Iterable[str] | None = None) -> list[Cell]:
    """The trained cells of the given tables (all by default), each once, in table order: every
    row's cell, followed by its replicates where a table runs more than one seed."""
    names = list(tables) if tables is not None else list(config["tables"])
    cells: dict[str, Cell] = {}
    for name in names:
        for row in config["tables"][name]["rows"]:
            if "cell" in row:
                for seed in table_seeds(config, name):
                    cell = replicate(config, parse_cell(row["cell"]), seed)
                    cells.setdefault(cell.id, cell)
    return list(cells.values())


def figure_models(config: dict) -> list[str]:
    """Models whose test-set representations the figures read (Figures 1, 3-6, 9, 10): cell paths
    and reference/<name>, each once, in configuration order."""
    figures = config["figures"]
    models = [figures[key] for key in ("standard", "adversarial") if key in figures]
    for key in ("figure1_models", "figure5_models", "figure6_models"):
        models += figures.get(key, [])
    for pair in figures.get("figure10_pairs", []):
        models += [pair["aligned"], pair["baseline"]]
    return list(dict.fromkeys(models))


def figure_cells(config: dict) -> list[Cell]:
    """The trained cells the figures need (the representation models above and the cells of the
    lambda sweep of Figure 8), each once; some are table cells too."""
    figures = config["figures"]
    models = figure_models(config) + figures.get("figure8_models", [])
    if "figure8_models" in figures:
        models.append(figures["figure8_baseline"])
    return [parse_cell(model) for model in dict.fromkeys(models) if not model.startswith(REFERENCE_PREFIX)]


def model_dataset(config: dict, model: str) -> str:
    """The dataset of a figure model (a cell path or reference/<name>)."""
    if model.startswith(REFERENCE_PREFIX):
        return config["reference_models"]["models"][model.removeprefix(REFERENCE_PREFIX)]["dataset"]
    return parse_cell(model).dataset


def cell_dir(config: dict, cell: Cell) -> str:
    return f"{results_dir(config)}/{cell.id}"


def synthetic_is_generated(config: dict, dataset: str, name: str) -> bool:
    return "generate" in config["datasets"][dataset]["synthetic"][name]


def synthetic_store(config: dict, dataset: str, name: str) -> str:
    folder = "generated" if synthetic_is_generated(config, dataset, name) else "synthetic"
    return f"{config['data_dir']}/{dataset}/{folder}/{name}"


def synthetic_size(config: dict, dataset: str, name: str) -> int:
    spec = config["datasets"][dataset]["synthetic"][name]
    if "generate" in spec:
        return spec["generate"]["images_per_class"] * config["datasets"][dataset]["num_classes"]
    return sum(part["images"] for part in spec["parts"])


def uses_edm(config: dict, dataset: str) -> bool:
    """Whether a dataset's diffusion model is an EDM U-Net (CIFAR, mini) rather than LightningDiT."""
    kind = config["diffusion_models"][config["datasets"][dataset]["diffusion"]]["source"]["kind"]
    return kind in ("edm_pickle", "train")


def reads_imagenet_folder(config: dict, dataset: str) -> bool:
    return config["datasets"][dataset]["source"]["kind"] == "imagenet_folder"


def unset_source_key(config: dict, dataset: str) -> str | None:
    """The config key a user must set before a dataset's cells can run, or None: an ImageNet
    folder's path (ILSVRC-2012 is the user's own copy; nothing can fetch it)."""
    source = config["datasets"][dataset]["source"]
    if source["kind"] == "imagenet_folder" and not source["path"] and not is_random(source):
        return f"datasets.{dataset}.source.path"
    return None


def runnable_cells(config: dict, cells: Iterable[Cell]) -> list[Cell]:
    """The cells whose data the configuration can reach (see unset_source_key)."""
    return [cell for cell in cells if unset_source_key(config, cell.dataset) is None]


def table_spec(config: dict, table: str) -> dict:
    """A table as the table rule reads it: config's rows, a row whose cell cannot run until a key
    is set carrying ``not_run: set <key>`` (shown in our columns instead of "pending")."""
    spec = copy.deepcopy(config["tables"][table])
    seeds = table_seeds(config, table)
    for row in spec["rows"]:
        key = unset_source_key(config, parse_cell(row["cell"]).dataset) if "cell" in row else None
        if key:
            row["not_run"] = f"set {key}"
        if "cell" in row and len(seeds) > 1:
            # the table shows the mean and spread over these cells (dra.analysis.tables)
            row["replicates"] = [replicate(config, parse_cell(row["cell"]), seed).id for seed in seeds]
    return spec


def split_store(config: dict, dataset: str, split: str) -> str:
    """Where a split's images are read from: an image store, except ImageNet's training images,
    which stay JPEGs in the user's folder and are read through its index (prepare_imagenet).
    ImageNet's 'test' store holds RobustBench's 5000 evaluation images at 224x224."""
    if split == "train" and reads_imagenet_folder(config, dataset):
        return f"{config['data_dir']}/{dataset}/index"
    return f"{config['data_dir']}/{dataset}/{split}"


def pretrained_weights(config: dict, arch: str) -> str:
    """The pretrained weights file of a timm arch, written by the download_pretrained rule."""
    return f"{config['data_dir']}/pretrained/{arch}/model.safetensors"


def diffusion_checkpoint(config: dict, model: str) -> str:
    return f"{config['data_dir']}/diffusion/{model}/model.safetensors"


def feature_views(config: dict, cell: Cell) -> int:
    """Appendix D: a second representation per image for large synthetic sets."""
    threshold = config["datasets"][cell.dataset]["extra_view_over_synthetic"]
    if threshold is None or cell.synthetic is None:
        return 1
    return 2 if synthetic_size(config, cell.dataset, cell.synthetic) > threshold else 1


def feature_store(config: dict, dataset: str, store: str, views: int, diffusion: str | None = None) -> str:
    """``store`` is 'train' or 'synthetic-<set>'; ``diffusion`` defaults to the dataset's model."""
    diffusion = diffusion or config["datasets"][dataset]["diffusion"]
    return f"{results_dir(config)}/{dataset}/features/{diffusion}/{store}-v{views}"


# ----------------------------------------------------------------------------------------------
# the resolved recipe


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


# ----------------------------------------------------------------------------------------------
# reading config files strictly


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys in a mapping; a config file must not hold any."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{key_node.start_mark.name}, line {line}: key '{key}' appears twice in one mapping "
                f"(first at line {seen[key]}); YAML would silently keep only the last value. Delete one of them."
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_config_file(path: str | Path) -> dict:
    """A config file as a mapping, or one ConfigError naming the file, the line and the column (YAML
    syntax), the repeated key (duplicates) or the top-level shape."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_StrictLoader)
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}. "
                          "Check the path given to --configfile.") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = error.problem or "unreadable"
        if error.context and error.context_mark:
            # the construct left open: "while parsing a flow sequence" started at line ...
            context = error.context_mark
            problem += f"; {error.context} started at line {context.line + 1}, column {context.column + 1}"
        raise ConfigError(
            f"{path}, {where}: not valid YAML ({problem}). Check the indentation (spaces only, no tabs), "
            "the brackets and the quoting there."
        ) from None
    if not isinstance(data, dict):
        shape = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(
            f"{path}, line 1, column 1: the file is {shape}; a config file is a mapping of keys "
            "(scale:, datasets:, ...) at its top level."
        )
    return data


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read each config file the run was given the strict way (Snakemake's own reading keeps the
    last of two equal keys and reports a syntax error without its file or line)."""
    for path in paths:
        load_config_file(path)


def typed_overrides(overrides: dict) -> dict:
    """``--config key={...}`` values as a config file would type them: Snakemake reads nested values
    with YAML's base loader, which keeps every scalar a string ('0.5', 'true')."""
    if isinstance(overrides, dict):
        return {key: typed_overrides(value) for key, value in overrides.items()}
    if isinstance(overrides, list):
        return [typed_overrides(value) for value in overrides]
    if isinstance(overrides, str):
        try:
            return yaml.safe_load(overrides) if overrides else overrides
        except yaml.YAMLError:
            return overrides
    return overrides
