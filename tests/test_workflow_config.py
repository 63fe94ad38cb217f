"""The configuration: the paper's numbers are in it, and a wrong key stops the run naming the key."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from dra.config import ConfigError, parse_cell, resolve_recipe, table_cells, validate_config
from config_cases import DELETE, apply

ROOT = Path(__file__).resolve().parent.parent


def load(*overlays):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    return config


@pytest.fixture(scope="module")
def paper():
    return load()


def test_paper_mini_and_short_configs_are_valid(paper):
    validate_config(paper)
    validate_config(load("config/mini.yaml"))
    short = load("config/short.yaml")
    validate_config(short)
    # the short budget: one GPU, CIFAR-10 with 1M synthetic images, all four methods and the noisy-target ablation
    assert {cell.method for cell in table_cells(short)} == {"at", "at+dra", "dm-at", "dm-at+dra", "dm-at+dra-noisy"}
    assert {cell.synthetic for cell in table_cells(short)} == {None, "1m"}


def paper_row(config, table, cell):
    return next(row for row in config["tables"][table]["rows"] if row.get("cell") == cell)


def test_paper_numbers_are_in_config(paper):
    # Table 1 and Table 2 of the paper, read off the text
    row = paper_row(paper, "table1", "cifar10/wrn-28-10/dm-at+dra/syn20m-bs2048-ep2400")
    assert row["paper"] == {"clean": 93.14, "autoattack": 67.83}
    row = paper_row(paper, "table2", "cifar10/wrn-34-10/at+dra/nosyn-bs128-ep200")
    assert row["paper"] == {"clean": 88.54, "autoattack": 57.29}
    row = paper_row(paper, "table3", "cifar10/wrn-28-10/dm-at+dra/syn1m-bs512-ep400")
    assert row["paper"] == {"cls95": 12, "cls99": 15, "robust_dim": 23}
    reported = [row["reported"] for row in paper["tables"]["table2"]["rows"] if "reported" in row]
    assert reported == [
        "Wu et al. 2024 (ADR)",
        "Cui et al. 2024 (IKL)",
        "Cui et al. 2024 (IKL)",
        "Peng et al. 2023 (RA)",
    ]
    assert paper["dra"]["lambda"] == 1.2
    assert paper["diffusion_models"]["edm-cifar10-cond"]["feature"]["sigma"] == 0.1
    # 50M set: four parts of 12.5M images (Hugging Face file sizes of P2333/DM-Improves-AT)
    parts = paper["datasets"]["cifar10"]["synthetic"]["50m"]["parts"]
    assert [p["images"] for p in parts] == [12_500_000] * 4


def test_cells_of_the_paper_each_once(paper):
    cells = table_cells(paper)
    ids = [cell.id for cell in cells]
    # Tables 1-3 (4 ImageNet cells in Table 1) and the two ablation cells of Section 5.6
    assert len(ids) == len(set(ids)) == 24
    assert sum(cell.dataset == "imagenet" for cell in cells) == 4
    # cells shared by Tables 1 and 2 are trained once
    assert ids.count("cifar10/wrn-28-10/dm-at/syn20m-bs2048-ep2400") == 1


def test_resolved_recipe_follows_dmat_and_the_paper(paper):
    recipe = resolve_recipe(paper, parse_cell("cifar10/wrn-28-10/dm-at+dra/syn20m-bs2048-ep2400"))
    assert recipe["attack"] == {"eps": 8 / 255, "step": 2 / 255, "steps": 10}
    assert recipe["objective"] == {"name": "trades", "beta": 5.0, "label_smoothing": 0.1}
    assert recipe["batch_size"] == 2048 and recipe["epochs"] == 2400
    assert recipe["data"]["unsup_fraction"] == 0.7 and recipe["data"]["val_size"] == 1024
    assert recipe["dra"]["lambda"] == 1.2
    # Appendix D: CIFAR-10 with more than 1M synthetic images gets the extra timestep view
    assert recipe["dra"]["diffusion"]["extra_view"] is True
    assert recipe["dra"]["features"]["real"].endswith("train-v2")
    small = resolve_recipe(paper, parse_cell("cifar10/wrn-28-10/dm-at+dra/syn1m-bs512-ep400"))
    assert small["dra"]["diffusion"]["extra_view"] is False
    plain = resolve_recipe(paper, parse_cell("cifar10/wrn-34-10/at/nosyn-bs128-ep200"))
    assert plain["dra"] is None and plain["data"]["synthetic"] is None
    # AT is DM-AT's TRADES without synthetic data (Section 5.1), as is the encoder ablation's "same AT setting"
    for cell in ("cifar10/wrn-34-10/at/nosyn-bs128-ep200", "cifar10/wrn-34-10/at+dra/nosyn-bs128-ep200",
                 "cifar10/edm-encoder/at/nosyn-bs128-ep200"):
        recipe = resolve_recipe(paper, parse_cell(cell))
        assert recipe["objective"] == {"name": "trades", "beta": 5.0, "label_smoothing": 0.1}, cell
        assert recipe["data"]["synthetic"] is None, cell


BAD_CONFIGS = [
    # (what is wrong, path to change, new value, text the message must contain)
    ("misspelt top-level key", ["sead"], 1, "'sead' was unexpected"),
    ("eps as a string", ["datasets", "cifar10", "eps_255"], "8", "datasets.cifar10.eps_255"),
    ("negative weight decay", ["recipes", "cifar10", "wrn-28-10", "optimizer", "weight_decay"], -1,
     "recipes.cifar10.wrn-28-10.optimizer.weight_decay"),
    ("unknown optimizer", ["recipes", "cifar10", "vit-b-2", "optimizer", "name"], "adam",
     "recipes.cifar10.vit-b-2.optimizer.name"),
    ("missing lambda", ["dra", "lambda"], DELETE, "'lambda' is a required property"),
    ("bad checksum", ["datasets", "cifar10", "source", "sha256"], "abc", "datasets.cifar10.source.sha256"),
    ("unknown objective", ["methods", "at", "objective"], "mart", "methods.at.objective"),
    ("fraction above 1", ["recipes", "cifar10", "wrn-28-10", "unsup_fraction"], 1.5,
     "recipes.cifar10.wrn-28-10.unsup_fraction"),
    ("runtime without unit", ["resources", "train", "runtime"], "72", "resources.train.runtime"),
    ("layer outside the U-Net", ["diffusion_models", "edm-cifar10-cond", "feature", "layer"], "bottleneck",
     "diffusion_models.edm-cifar10-cond.feature.layer"),
    ("misspelt recipe key", ["recipes", "cifar10", "wrn-28-10", "attack", "epsilon"], 8,
     "'epsilon' was unexpected"),
    ("unknown diffusion model", ["datasets", "cifar10", "diffusion"], "edm-imagenet",
     "datasets.cifar10.diffusion"),
    ("WRN depth not 6n+4", ["archs", "wrn-28-10", "depth"], 27, "archs.wrn-28-10.depth"),
    ("cell with an unknown arch", ["tables", "table1", "rows", 0, "cell"],
     "cifar10/wrn-28-11/dm-at/syn20m-bs2048-ep2400", "tables.table1.rows[0].cell"),
    ("synthetic method with a nosyn budget", ["tables", "table1", "rows", 0, "cell"],
     "cifar10/wrn-28-10/dm-at/nosyn-bs2048-ep2400", "needs synthetic data"),
    ("unknown synthetic set", ["tables", "table1", "rows", 0, "cell"],
     "cifar10/wrn-28-10/dm-at/syn7m-bs2048-ep2400", "synthetic set '7m'"),
    ("one-epoch OneCycle warm-up", ["tables", "table2", "rows", 0, "cell"], "cifar10/wrn-34-10/at/nosyn-bs128-ep40",
     "warmup_fraction x epochs is exactly 1"),
    ("malformed budget", ["tables", "table2", "rows", 0, "cell"], "cifar10/wrn-34-10/at/bs128-ep200",
     "tables.table2.rows[0].cell"),
    ("pretrained weights for a WideResNet", ["archs", "wrn-28-10", "pretrained"],
     {"url": "https://example.org/w.safetensors", "sha256": None}, "archs.wrn-28-10.pretrained"),
    ("pretrained weights without a checksum entry", ["archs", "convnext-b", "pretrained"],
     {"url": "https://example.org/w.safetensors"}, "archs.convnext-b.pretrained"),
    ("an EDM set in parts", ["datasets", "cifar10", "synthetic", "1m"], {"generate": {"images_per_class": 10,
     "num_steps": 18, "parts": 4}}, "datasets.cifar10.synthetic.1m.generate.parts"),
    ("online targets from LightningDiT", ["dra", "target"], "online", "cell imagenet/convnext-b/dm-at+dra"),
    ("a lambda sweep of one strength", ["figures", "figure8_models"],
     ["cifar100/wrn-28-10/dm-at+dra/syn1m-bs512-ep400"], "figures.figure8_models: a sweep needs two strengths"),
    ("LightningDiT without its tokenizer", ["diffusion_models", "lightningdit-xl", "source", "tokenizer"], DELETE,
     "diffusion_models.lightningdit-xl.source.tokenizer"),
]


@pytest.mark.parametrize("what,path,value,expected", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_rejected_naming_the_key(paper, what, path, value, expected):
    config = copy.deepcopy(paper)
    apply(config, path, value)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message  # one clear message
    assert "config.yaml" in message  # where to fix it
