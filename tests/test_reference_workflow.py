"""Reference cells: DM-AT's released checkpoints in config, in the DAG, and in the reference table.

Published numbers: DM-AT README "Pre-trained checkpoints" (at b390f25), the same
as RobustBench's Wang2023Better entries (model_info/, at 78fcc9e).
"""

from __future__ import annotations

import copy
import json
import shlex
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from dra.analysis.tables import build_and_write_table, build_table
from dra.config import ConfigError, validate_config
from dra.io import write_yaml
from dra.reference import check_reference_models, reference_recipe, reference_table_spec

ROOT = Path(__file__).resolve().parent.parent

# name -> (dataset, arch, RobustBench name, clean, AutoAttack); RobustBench model_info, DM-AT README.md
PUBLISHED = {
    "cifar10_linf_wrn28-10": ("cifar10", "wrn-28-10", "Wang2023Better_WRN-28-10", 92.44, 67.31),
    "cifar10_linf_wrn70-16": ("cifar10", "wrn-70-16", "Wang2023Better_WRN-70-16", 93.25, 70.69),
    "cifar100_linf_wrn28-10": ("cifar100", "wrn-28-10", "Wang2023Better_WRN-28-10", 72.58, 38.83),
    "cifar100_linf_wrn70-16": ("cifar100", "wrn-70-16", "Wang2023Better_WRN-70-16", 75.22, 42.67),
}
HF = {"repo": "wzekai99/DM-Improves-AT", "type": "model", "revision": "main"}


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_reference_cells_are_dmat_releases_with_published_numbers(config):
    models = config["reference_models"]["models"]
    assert list(models) == list(PUBLISHED)
    for name, (dataset, arch, robustbench, clean, autoattack) in PUBLISHED.items():
        entry = models[name]
        assert (entry["dataset"], entry["arch"], entry["robustbench"]) == (dataset, arch, robustbench)
        assert entry["published"] == {"clean": clean, "autoattack": autoattack}
        assert entry["checkpoint"]["hf"] == {**HF, "path": f"checkpoint/{name}.pt"}
        assert entry["args"]["hf"] == {**HF, "path": f"argtxt/{name}.txt"}
    validate_config(config)
    check_reference_models(config)


def test_reference_recipe_is_what_the_evaluation_reads(config):
    recipe = reference_recipe(config, "cifar100_linf_wrn70-16")
    # DM-AT's WRN-70-16 with SiLU and CIFAR-100 normalization inside the model (DM-AT wideresnetwithswish.py)
    assert recipe["arch"] == {"family": "wrn", "depth": 70, "width": 16, "activation": "silu"}
    assert recipe["data"] == {"num_classes": 100, "mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]}
    assert recipe["reference"]["dataset_kind"] == "cifar100"


@pytest.mark.parametrize(
    "change, message",
    [(("arch", "wrn-40-2"), "reference_models.models.cifar10_linf_wrn28-10.arch: 'wrn-40-2' is not in archs"),
     (("arch", "vit-b-2"), "reference_models.models.cifar10_linf_wrn28-10.arch: DM-AT checkpoints are WideResNets"),
     (("dataset", "svhn"), "reference_models.models.cifar10_linf_wrn28-10.dataset: 'svhn' is not in datasets")],
)
def test_reference_entry_pointing_at_nothing_is_refused(config, change, message):
    bad = copy.deepcopy(config)
    bad["reference_models"]["models"]["cifar10_linf_wrn28-10"][change[0]] = change[1]
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_reference_models(bad)


def test_reference_entry_without_published_numbers_is_refused_by_the_schema(config):
    bad = copy.deepcopy(config)
    del bad["reference_models"]["models"]["cifar10_linf_wrn70-16"]["published"]
    with pytest.raises(ConfigError, match="reference_models.models.cifar10_linf_wrn70-16.*'published' is a required"):
        validate_config(bad)


def test_dry_run_plans_every_reference_cell_once():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "all_reference", "--dry-run", "--printshellcmds"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    stats = result.stdout.split("Job stats:")[-1]
    jobs = Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)})
    assert jobs["fetch_reference_checkpoint"] == 4
    assert jobs["reference_recipe"] == 4
    assert jobs["convert_reference_checkpoint"] == 4
    assert jobs["reference_autoattack"] == 4
    assert jobs["reference_table"] == 1
    assert jobs["train_cell"] == 0  # nothing is trained for a reference cell
    for name, (dataset, *_rest) in PUBLISHED.items():
        # the trained cells' AutoAttack command, on the converted checkpoint: l_inf 8/255, full test set, seed 1
        assert (f"python -m scripts.evaluate_autoattack --model results/paper/reference/{name}/train/model.pt"
                f" --recipe results/paper/reference/{name}/recipe.yaml --test-store resources/{dataset}/test"
                f" --eps 8/255 --n 10000 --seed 1") in result.stdout
        # the Hub file as one quoted JSON argument (the shell never reads a config string)
        hf = {"repo": HF["repo"], "type": HF["type"], "path": f"checkpoint/{name}.pt", "revision": HF["revision"]}
        spec = json.dumps({"hf": hf})
        assert f"python -m scripts.download --spec {shlex.quote(spec)}" in result.stdout


def test_reference_table_shows_published_and_measured_side_by_side(config, tmp_path):
    spec = reference_table_spec(config)
    measured = tmp_path / "reference" / "cifar10_linf_wrn28-10" / "autoattack.json"
    measured.parent.mkdir(parents=True)
    measured.write_text(json.dumps({"clean_accuracy": 92.41, "robust_accuracy": 67.29, "n": 10000}))

    table = build_table(spec["rows"], tmp_path, "accuracy")

    assert list(table.columns) == ["Dataset", "Model", "Checkpoint", "RobustBench", "Source", "Paper clean",
                                   "Paper AA", "Ours clean", "Ours AA", "Diff clean", "Diff AA", "n"]
    first = table.iloc[0]
    assert ((first["Paper clean"], first["Paper AA"], first["Ours clean"], first["Ours AA"])
            == (92.44, 67.31, 92.41, 67.29))
    assert (first["Diff clean"], first["Diff AA"]) == (-0.03, -0.02)  # measured - published
    pending = table.iloc[3]
    assert ((pending["Checkpoint"], pending["Paper AA"], pending["Ours AA"])
            == ("cifar100_linf_wrn70-16", 42.67, "pending"))

    # the rule's way: the spec file written by reference_table_spec, read at key 'rows'
    write_yaml(tmp_path / "reference.spec.yaml", spec)
    build_and_write_table(tmp_path / "reference.spec.yaml", "rows", tmp_path, "accuracy",
                          tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    markdown = (tmp_path / "t.md").read_text()
    assert "| cifar10_linf_wrn28-10 " in markdown and "92.44" in markdown and "92.41" in markdown
    assert "Wang2023Better_WRN-70-16" in markdown
