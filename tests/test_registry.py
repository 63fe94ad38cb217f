"""The registries of names (dra.registry): dispatch, the config schema and the checks read them, and
a new model family is one registration (here in this file) plus config."""

import contextlib
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import update_config
from torch import nn

from dra.config import ConfigError, load_schema, parse_cell, resolve_recipe, validate_config
from dra.models import create_classifier
from dra.registry import MODEL_FAMILIES, OBJECTIVES, OPTIMIZERS, SCHEDULES, TABLE_KINDS, RegistryError
from dra.training.recipe import RecipeError, validate_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_each_set_of_names_is_read_from_the_registrations():
    # the names the workflow had as if/elif chains and schema enums before the registries
    assert MODEL_FAMILIES.names() == ["edm_encoder", "timm", "wrn"]
    assert OBJECTIVES.names() == ["pgd_at", "standard", "trades"]
    assert OPTIMIZERS.names() == ["lion", "sgd"]
    assert SCHEDULES.names() == ["cosine", "dmat_onecycle"]
    assert TABLE_KINDS.names() == ["accuracy", "classification_dimension"]
    assert OBJECTIVES.meta("trades")["clean_branch"] and not OBJECTIVES.meta("pgd_at")["clean_branch"]
    assert TABLE_KINDS.meta("accuracy")["result_files"] == ("autoattack.json", "autoattack.npz")
    schema = load_schema()["$defs"]
    assert schema["arch"]["properties"]["family"]["enum"] == MODEL_FAMILIES.names()
    assert schema["method"]["properties"]["objective"]["enum"] == OBJECTIVES.names()
    assert schema["recipe"]["properties"]["schedule"]["properties"]["name"]["enum"] == SCHEDULES.names()


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(RegistryError, match=r"optimizer.name: 'adam' is not a registered optimizer "
                                            r"\(known: 'lion', 'sgd'\)"):
        OPTIMIZERS.get("adam")


def test_checking_the_config_imports_no_torch():
    # the Snakemake process validates the configuration on every run and in every cluster job
    code = ("import sys, yaml; from dra.config import validate_config; "
            "validate_config(yaml.safe_load(open('config.yaml'))); "
            "print(sorted(m for m in ('torch', 'pandas', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


class TinyMLP(nn.Module):
    """Flatten, one hidden ReLU layer, logits; the hidden layer is the representation DRA aligns."""

    def __init__(self, pixels: int, hidden: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden

    def forward_features(self, x):
        features = self.body(x)
        return self.head(features), features

    def forward(self, x):
        return self.forward_features(x)[0]


@pytest.fixture
def tiny_family():
    """A new family, registered the way a family module registers itself."""

    @MODEL_FAMILIES.register("tiny_mlp", required=("hidden", "image_size"),
                             keys={"hidden": {"type": "integer", "minimum": 1},
                                   "image_size": {"type": "integer", "minimum": 1}},
                             recipe_keys={"hidden": {"type": "integer", "minimum": 1, "description": "an integer >= 1"},
                                          "image_size": {"type": "integer", "minimum": 1,
                                                         "description": "the image side"}})
    def build_tiny_mlp(arch, num_classes, mean, std):
        return TinyMLP(3 * arch["image_size"] ** 2, arch["hidden"], num_classes)

    yield build_tiny_mlp
    MODEL_FAMILIES.unregister("tiny_mlp")


def _mini_config_with_tiny_arch() -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / "mini.yaml").read_text()))
    config["archs"]["tiny-16"] = {"family": "tiny_mlp", "hidden": 16, "image_size": 8}
    config["recipes"]["digits"]["tiny-16"] = copy.deepcopy(config["recipes"]["digits"]["wrn-10-1"])
    config["tables"]["table1"]["rows"].append({"cell": "digits/tiny-16/at/nosyn-bs128-ep30", "paper": None})
    return config


def test_a_new_family_is_one_registration_plus_config(tiny_family):
    config = _mini_config_with_tiny_arch()
    validate_config(config)  # the schema's enum and the arch keys come from the registration
    recipe = validate_recipe(resolve_recipe(config, parse_cell("digits/tiny-16/at/nosyn-bs128-ep30")))
    assert recipe["arch"] == {"family": "tiny_mlp", "hidden": 16, "image_size": 8}
    data = recipe["data"]
    model = create_classifier(recipe["arch"], data["num_classes"], data["mean"], data["std"])
    logits, features = model.forward_features(torch.rand(2, 3, 8, 8))
    assert logits.shape == (2, 10) and features.shape == (2, 16)
    # (3 x 8 x 8 inputs + 1 bias) x 16 hidden + (16 + 1) x 10 classes
    assert sum(p.numel() for p in model.parameters()) == (192 + 1) * 16 + (16 + 1) * 10 == 3258


def test_a_new_family_s_keys_are_checked_where_they_are_written(tiny_family):
    config = _mini_config_with_tiny_arch()
    del config["archs"]["tiny-16"]["hidden"]
    with pytest.raises(ConfigError, match=r"config key archs.tiny-16.hidden: required for family tiny_mlp"):
        validate_config(config)
    config = _mini_config_with_tiny_arch()
    config["archs"]["tiny-16"]["hidden"] = 0
    with pytest.raises(ConfigError, match=r"config key archs.tiny-16.hidden: 0 is less than the minimum of 1"):
        validate_config(config)
    recipe = resolve_recipe(_mini_config_with_tiny_arch(), parse_cell("digits/tiny-16/at/nosyn-bs128-ep30"))
    del recipe["arch"]["hidden"]
    with pytest.raises(RecipeError, match=r"key 'arch.hidden' is missing; expected an integer >= 1"):
        validate_recipe(recipe)


@contextlib.contextmanager
def _registered_family(name, **meta):
    MODEL_FAMILIES.register(name, **meta)(lambda arch, num_classes, mean, std: None)
    try:
        yield
    finally:
        MODEL_FAMILIES.unregister(name)


def test_a_family_s_arch_keys_are_declared_once_in_its_registration():
    # config/schema.yaml names only `family`; every other arch key is a registration's
    arch = load_schema()["$defs"]["arch"]["properties"]
    assert set(arch) == {"family", "diffusion", "name", "kwargs", "pretrained", "depth", "width", "activation"}
    assert arch["depth"] == {"type": "integer", "minimum": 10}
    assert arch["pretrained"] == {"$ref": "#/$defs/download"}
    # a key two families declare differently, a required key no `keys` declares: stopped, named
    with (_registered_family("other_wrn", required=("depth",), keys={"depth": {"type": "string"}}),
          pytest.raises(RegistryError, match=r"model family 'wrn' declares arch key 'depth' with the schema")):
        load_schema()
    with (_registered_family("keyless", required=("hidden",)),
          pytest.raises(RegistryError, match=r"'keyless' requires arch keys \['hidden'\] that its `keys`")):
        load_schema()


def test_without_its_registration_the_family_is_unknown():
    config = _mini_config_with_tiny_arch()
    with pytest.raises(ConfigError,
                       match=r"archs.tiny-16: Additional properties are not allowed \('hidden', 'image_size'"):
        validate_config(config)   # its keys are the registration's
    config["archs"]["tiny-16"] = {"family": "tiny_mlp"}
    with pytest.raises(ConfigError,
                       match=r"archs.tiny-16.family: 'tiny_mlp' is not one of \['edm_encoder', 'timm', 'wrn'\]"):
        validate_config(config)
    with pytest.raises(ValueError, match=r"arch.family: 'tiny_mlp' is not a registered model family"):
        create_classifier({"family": "tiny_mlp"}, 10, [0.5] * 3, [0.25] * 3)


def test_a_table_s_kind_is_config_not_its_name():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    # the classification-dimension table under another name reads the same files
    config["tables"]["ablations"] = copy.deepcopy(config["tables"]["table3"])
    config["tables"]["ablations"]["rows"] = config["tables"]["ablations"]["rows"][:1]
    config["tables"]["table3"]["rows"] = config["tables"]["table3"]["rows"][1:]
    validate_config(config)
    from dra.config import table_kind, table_result_files

    assert table_kind(config, "ablations") == "classification_dimension"
    assert table_result_files(config, "ablations") == ["classification_dimension.json"]
    assert table_result_files(config, "table1") == ["autoattack.json", "autoattack.npz"]
    config["tables"]["table3"]["kind"] = "accuracy"   # rows with cls95 ... in an accuracy table
    with pytest.raises(ConfigError, match=r"tables.table3.rows\[0\].paper: the rows of a table of kind accuracy"):
        validate_config(config)
    config["tables"]["table3"]["kind"] = "dimension"
    with pytest.raises(ConfigError, match=r"tables.table3.kind: 'dimension' is not one of"):
        validate_config(config)
    json.dumps(load_schema())  # the schema with the registries' names is plain JSON
