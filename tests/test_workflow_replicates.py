"""Replicates as cells: a seed is part of a cell's path (<budget>-seed<s>), reaches the recipe, and
is planned, asked for and refused like any cell. The mini's replicate overlay plans three seeds of
AT, AT+DRA, DM-AT and DM-AT+DRA, each evaluated on the 500 test digits (dry run only: the run
itself takes over an hour on 2 cores)."""

import re

import pytest
import yaml
from snakemake.utils import update_config

from dra import config as cfg
from workflow_helpers import ROOT, run_snakemake

OVERLAYS = ("config/mini.yaml", "config/mini-replicates.yaml")
METHODS = ("at", "at+dra", "dm-at", "dm-at+dra")


def load(*overlays):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    return config


def test_the_seed_is_part_of_the_path_and_of_the_recipe():
    config = load(*OVERLAYS)
    cfg.validate_config(config)
    assert cfg.table_seeds(config, "replicates") == [1, 2, 3] and cfg.table_seeds(config, "table2") == [1]
    cell = cfg.parse_cell("digits/wrn-10-1/at+dra/nosyn-bs128-ep30-seed3")
    assert (cell.seed, cell.epochs, cell.batch_size, cell.synthetic) == (3, 30, 128, None)
    # the plain path is config's seed, so one-seed tables keep their paths
    plain = cfg.parse_cell("digits/wrn-10-1/at+dra/nosyn-bs128-ep30")
    assert plain.seed is None and cfg.replicate(config, plain, 3) == cell and cfg.replicate(config, plain, 1) == plain
    assert cfg.resolve_recipe(config, plain)["seed"] == config["seed"] == 1
    recipe = cfg.resolve_recipe(config, cell)
    assert recipe["seed"] == 3 and recipe["epochs"] == 30  # init, batches, augmentation, attacks, head
    encoder = cfg.resolve_recipe(config, cfg.parse_cell("digits/edm-encoder-digits/at/nosyn-bs128-ep10-seed2"))
    assert encoder["arch"]["noise_seed"] == 2  # the fine-tuned encoder's input noise too
    # the table spec lists each row's replicates for the table builder
    spec = cfg.table_spec(config, "replicates")
    assert spec["rows"][1]["replicates"] == [
        f"digits/wrn-10-1/at+dra/nosyn-bs128-ep30{s}" for s in ("", "-seed2", "-seed3")]
    assert "replicates" not in cfg.table_spec(config, "table2")["rows"][0]
    # Figure 8 plots the replicates the tables run of a cell; the mini's lambda sweep has one seed
    assert [c.budget for c in cfg.cell_replicates(config, "digits/wrn-10-1/dm-at+dra/syn2k-bs128-ep30")] == [
        "syn2k-bs128-ep30", "syn2k-bs128-ep30-seed2", "syn2k-bs128-ep30-seed3"]
    assert len(cfg.cell_replicates(load("config/mini.yaml"), "digits/wrn-10-1/dm-at+dra/syn2k-bs128-ep30")) == 1


def test_a_row_names_the_plain_budget():
    # replicates come from tables.<t>.seeds; config/schema.yaml's cell pattern has no seed
    config = load("config/mini.yaml")
    config["tables"]["table1"]["rows"][0]["cell"] += "-seed2"
    with pytest.raises(cfg.ConfigError, match=r"tables.table1.rows\[0\].cell: '\S+-seed2' does not match"):
        cfg.validate_config(config)


def test_the_replicate_target_plans_three_seeds_of_four_methods_on_500_digits():
    result = run_snakemake(ROOT, "all_replicates", "--dry-run", "--forceall", "--printshellcmds",
                           "--configfile", *OVERLAYS, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    trained = set(re.findall(r"output: results/mini-replicates/(\S+)/train/model\.pt", result.stdout))
    expected = {f"digits/wrn-10-1/{method}/{budget}{seed}"
                for method in METHODS
                for budget in ["syn2k-bs128-ep30" if method.startswith("dm-at") else "nosyn-bs128-ep30"]
                for seed in ("", "-seed2", "-seed3")}
    assert trained == expected
    evaluations = re.findall(r"scripts\.evaluate_autoattack .*--n (\d+) ", result.stdout)
    assert evaluations == ["500"] * 12  # the whole test split
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout.split("Job stats:")[1], re.M))
    assert (jobs["train_cell"], jobs["autoattack"], jobs["build_table"]) == ("12", "12", "1")


@pytest.mark.parametrize("overlays, path, message", [
    # a seed the table does not run: no rule (the budget is no planned one)
    (OVERLAYS, "digits/wrn-10-1/at/nosyn-bs128-ep30-seed4", "MissingRuleException"),
    # a planned budget on a row that runs one seed
    (OVERLAYS, "digits/wrn-10-1/st/nosyn-bs128-ep30-seed2", "is not a row of any table"),
    # the plain mini runs one seed
    (OVERLAYS[:1], "digits/wrn-10-1/at/nosyn-bs128-ep30-seed2", "MissingRuleException"),
])
def test_unplanned_replicates_are_refused(overlays, path, message):
    scale = load(*overlays)["scale"]
    result = run_snakemake(ROOT, f"results/{scale}/{path}/autoattack.json", "--dry-run", "--configfile", *overlays,
                           timeout=600)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
