"""The DAG as Snakemake plans it: dry runs of the paper, lint, format, env pins."""

import re
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, run_snakemake


def snakemake(*args, check=True):
    result = run_snakemake(ROOT, *args, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(*args):
    """Rule name -> number of jobs of a dry run."""
    result = snakemake(*args, "--dry-run", "--quiet", "rules")
    stats = result.stdout.split("Job stats:")[-1]
    counts = Counter()
    for line in stats.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match[1] != "total":
            counts[match[1]] = int(match[2])
    return counts


def test_all_data_of_the_paper_plans_every_download_once():
    jobs = planned_jobs("all_data")
    # CIFAR-10 and CIFAR-100 archives; synthetic parts 1M + 20M (2) + 50M (4) for CIFAR-10, 1M for CIFAR-100
    assert jobs["download_archive"] == 2
    assert jobs["prepare_cifar"] == 2
    assert jobs["fetch_synthetic_part"] == 1 + 2 + 4 + 1
    assert jobs["prepare_synthetic"] == 4
    # ImageNet: the DINOv3 weights of both archs and LightningDiT, VA-VAE, latent statistics; without
    # an ImageNet folder configured nothing is indexed
    assert jobs["download_pretrained"] == 2 and jobs["fetch_lightningdit"] == 3
    assert jobs["prepare_imagenet"] == 0 and jobs["generate_imagenet_synthetic_part"] == 0


def test_all_tables_of_the_paper_plans_every_cell_once(imagenet_overlay):
    jobs = planned_jobs("all_tables", "--configfile", imagenet_overlay)
    # 22 cells of Tables 1-3 (4 on ImageNet) and the two ablation cells of Section 5.6
    assert jobs["train_cell"] == 24
    assert jobs["resolve_recipe"] == 24
    # Tables 1-2 and ablation cells are attacked; the two AT WRN-28-10 cells appear only in Table 3
    assert jobs["autoattack"] == 22
    assert jobs["classification_dimension"] == 4
    assert jobs["build_table"] == 4
    assert jobs["train_noisy_classifier"] == 1
    # ImageNet: 4M images in 100 sampling jobs joined once, LightningDiT features of the training
    # JPEGs and of the synthetic set, the 5000 evaluation images; no EDM probe for LightningDiT
    assert jobs["generate_imagenet_synthetic_part"] == 100 and jobs["assemble_imagenet_synthetic"] == 1
    assert jobs["extract_imagenet_features"] == 2
    assert jobs["prepare_imagenet"] == 1 and jobs["prepare_imagenet_test"] == 1
    assert jobs["download_pretrained"] == 2 and jobs["fetch_lightningdit"] == 3
    # the linear probes of Section 3 read EDM U-Nets: CIFAR-10 and CIFAR-100 only
    assert planned_jobs("all_features", "--configfile", imagenet_overlay)["validate_features"] == 2


def test_imagenet_cell_is_planned_with_its_recipe(imagenet_overlay):
    from dra.config import parse_cell, resolve_recipe

    cell = "imagenet/vit-b-16/dm-at+dra/syn4m-bs1024-ep100"
    result = snakemake(f"results/paper/{cell}/autoattack.json", "--configfile", imagenet_overlay, "--dry-run",
                       "--printshellcmds")
    train = result.stdout.split("rule train_cell:")[1].split("\n\n")[0]
    for path in ("resources/imagenet/index", "resources/imagenet/generated/4m",
                 "results/paper/imagenet/features/lightningdit-xl/train-v1",
                 "results/paper/imagenet/features/lightningdit-xl/synthetic-4m-v1",
                 "resources/pretrained/vit-b-16/model.safetensors"):
        assert path in train, path
    attack = result.stdout.split("rule autoattack:")[1]
    assert "resources/imagenet/test" in attack and "--eps 4/255 --n 5000" in attack
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    recipe = resolve_recipe(config, parse_cell(cell))
    # Appendix B: Lion, 3-step TRADES with beta 10, 100 epochs; Section 5.1: eps 4/255 at 224x224
    assert recipe["optimizer"]["name"] == "lion" and recipe["epochs"] == 100
    assert recipe["attack"]["steps"] == 3 and recipe["attack"]["eps"] == pytest.approx(4 / 255)
    assert recipe["objective"] == {"name": "trades", "beta": 10.0, "label_smoothing": 0.1}
    assert recipe["data"]["format"] == "imagenet_index" and recipe["data"]["image_size"] == 224
    assert recipe["data"]["val_size"] == 0 and recipe["checkpoint"]["select"] == "last"
    assert recipe["arch"] == {"family": "timm", "name": "vit_base_patch16_dinov3.lvd1689m",
                              "kwargs": {"global_pool": "token"}, "pretrained": True,
                              "weights": "resources/pretrained/vit-b-16/model.safetensors"}
    assert recipe["dra"]["lambda"] == 1.2 and recipe["dra"]["target"] == "stored"


def test_paper_training_job_asks_the_cluster_for_a_gpu():
    # the slurm profile as users type it; --sdm env-modules only because this machine has no conda
    result = snakemake(
        "results/paper/cifar10/wrn-28-10/dm-at/syn1m-bs512-ep400/train/model.pt",
        "--profile",
        "slurm",
        "--sdm",
        "env-modules",
        "--dry-run",
        "--printshellcmds",
    )
    job = result.stdout.split("rule train_cell:")[1].split("Job stats")[0]
    # resources.train.runtime, 72 h, capped at the partition's hardware.time_limit, 24 h, in minutes
    # as Snakemake resolves it; the profile asks SLURM for SIGURG 600 s before that limit
    for resource in ("gpu=1", "tasks_per_gpu=0", "runtime=1440", "mem_mb=64000", "slurm_partition=gpu",
                     "slurm_extra=--signal=URG@600"):
        assert resource in job, resource
    assert "python -m scripts.train --recipe" in job


def test_one_cell_by_its_path():
    jobs = planned_jobs("results/paper/cifar10/wrn-28-10/dm-at/syn1m-bs512-ep400/autoattack.json")
    assert jobs["train_cell"] == 1 and jobs["autoattack"] == 1
    assert jobs["extract_features"] == 0  # DM-AT without DRA needs no diffusion features


def test_mistyped_cell_path_fails_at_once():
    result = snakemake(
        "results/paper/cifar10/wrn-28-11/dm-at/syn1m-bs512-ep400/autoattack.json", "--dry-run", check=False
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "MissingRuleException" in output or "No rule to produce" in output


def test_cell_not_in_any_table_is_refused():
    # every wildcard is valid, but the combination is no row of a table
    result = snakemake(
        "results/paper/cifar10/wrn-70-16/at/nosyn-bs128-ep200/autoattack.json", "--dry-run", check=False
    )
    assert result.returncode != 0
    assert "is not a row of any table" in result.stdout + result.stderr


def test_wrong_config_key_stops_before_any_job():
    result = snakemake("all_tables", "--dry-run", "--config", "sead=3", check=False)
    assert result.returncode != 0
    assert "'sead' was unexpected" in result.stdout + result.stderr
    assert "Job stats" not in result.stdout


def test_mini_plans_every_rule_family():
    # --forceall: plan every job whatever a previous mini run left in results/mini
    jobs = planned_jobs("all", "--forceall", "--configfile", "config/mini.yaml")
    for rule in (
        "prepare_digits",
        "train_diffusion",
        "train_noisy_classifier",
        "generate_synthetic",
        "synthetic_quality",
        "extract_features",
        "validate_features",
        "train_cell",
        "autoattack",
        "classification_dimension",
        "build_table",
    ):
        assert jobs[rule] >= 1, rule
    # five method cells, two more lambdas of the Figure 8 sweep (config/mini.yaml figures) and the two
    # ablation cells (noisy-input target, fine-tuned diffusion encoder)
    assert jobs["train_cell"] == 9


def test_lint_is_clean():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0, result.stderr
    assert "Congratulations" in result.stderr + result.stdout


def test_snakefmt_is_clean():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _requirement_names(requirements):
    return {re.split(r"[ =<>!\[]", req.strip())[0].lower().replace("_", "-"): req for req in requirements}


def test_env_files_parse_and_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = _requirement_names(project["dependencies"])
    exact = {name: req.split("==")[1] for name, req in pinned.items() if "==" in req}
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        assert env["channels"][0] == "conda-forge", env_file
        packages = []
        for dependency in env["dependencies"]:
            packages += dependency["pip"] if isinstance(dependency, dict) else [dependency]
        if env_file.stem == "robustbench":
            # RobustBench's zoo pins its own timm and is kept out of the workflow's install
            # (pyproject.toml); its env pins robustbench and fra31's AutoAttack to one commit
            assert "robustbench==1.1.1" in packages and "timm" not in str(packages)
            assert any(re.fullmatch(r"autoattack @ git\+https://\S+@[0-9a-f]{40}", p) for p in packages), packages
            continue
        for package in packages:
            name = re.split(r"[ =<>!]", package.strip())[0].lower().replace("_", "-")
            if name in ("python", "pip"):
                continue
            assert name in pinned, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
            if name in exact:
                assert f"=={exact[name]}" in package.replace(" ", ""), f"{env_file.name}: {package} vs {pinned[name]}"


def test_every_rule_has_a_log_and_a_conda_env_unless_it_runs_in_snakemake():
    text = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    rules = re.split(r"\nrule ", text)[1:]
    for rule in rules:
        name = rule.split(":")[0]
        if name.startswith("all_"):
            continue
        assert "log:" in rule, name
        # a run: block runs inside Snakemake, which ignores conda: there (tests/test_rule_envs.py)
        assert ("conda:" in rule) != ("\n    run:" in rule), name
