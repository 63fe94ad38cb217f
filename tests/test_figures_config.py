"""The figures: section of the configuration, figure cells and the per-method DRA strength."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from dra import config as cfg

ROOT = Path(__file__).resolve().parent.parent


def load(overlay=None):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if overlay:
        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    cfg.validate_config(config)
    return config


def test_method_lambda_overrides_the_dra_strength():
    config = load("config/mini.yaml")
    swept = cfg.resolve_recipe(config, cfg.parse_cell("digits/wrn-10-1/dm-at+dra-lambda0.4/syn2k-bs128-ep30"))
    default = cfg.resolve_recipe(config, cfg.parse_cell("digits/wrn-10-1/dm-at+dra/syn2k-bs128-ep30"))
    assert swept["dra"]["lambda"] == 0.4
    assert default["dra"]["lambda"] == config["dra"]["lambda"] == 1.2  # Section 4.2
    # nothing else differs between the two recipes
    swept["dra"]["lambda"] = 1.2
    swept["cell"]["method"] = "dm-at+dra"
    assert swept == default


def test_standard_training_keeps_its_last_checkpoint():
    config = load()
    recipe = cfg.resolve_recipe(config, cfg.parse_cell("cifar10/wrn-28-10/st/nosyn-bs128-ep200"))
    assert recipe["objective"]["name"] == "standard" and recipe["checkpoint"]["select"] == "last"
    at = cfg.resolve_recipe(config, cfg.parse_cell("cifar10/wrn-28-10/at/nosyn-bs128-ep200"))
    assert at["checkpoint"]["select"] == "best_val"


def test_mini_figure_cells_add_the_sweep_to_the_table_cells():
    config = load("config/mini.yaml")
    figure_only = {c.id for c in cfg.figure_cells(config)} - {c.id for c in cfg.table_cells(config)}
    assert figure_only == {
        "digits/wrn-10-1/dm-at+dra-lambda0.4/syn2k-bs128-ep30",
        "digits/wrn-10-1/dm-at+dra-lambda2.0/syn2k-bs128-ep30",
    }
    assert cfg.figure_models(config)[:2] == [config["figures"]["standard"], config["figures"]["adversarial"]]


def test_paper_figure_models_include_the_released_checkpoints():
    config = load()
    models = cfg.figure_models(config)
    assert "reference/cifar10_linf_wrn28-10" in models
    assert all(not c.id.startswith("reference/") for c in cfg.figure_cells(config))
    assert cfg.model_dataset(config, "reference/cifar10_linf_wrn70-16") == "cifar10"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.update(figure8_models=["cifar100/wrn-28-10/dm-at/syn1m-bs512-ep400"] * 2), "dra: false"),
        (lambda f: f.update(standard="cifar100/wrn-28-10/dm-at/syn1m-bs512-ep400"), "share a dataset"),
        (lambda f: f.update(figure1_models=["reference/nope"]), "'nope' is not in reference_models"),
        (lambda f: f.update(figure5_models=["cifar10/wrn-99-1/at/nosyn-bs128-ep200"]), "wrn-99-1"),
        (lambda f: f.pop("figure8_baseline"), "figure8_baseline"),
        (lambda f: f["figure10_pairs"].append({"aligned": "x"}), "figure10_pairs"),
    ],
)
def test_bad_figure_configuration_names_the_key(change, message):
    config = copy.deepcopy(load())
    change(config["figures"])
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate_config(config)
    assert "figures" in str(error.value)
    assert message in str(error.value)
