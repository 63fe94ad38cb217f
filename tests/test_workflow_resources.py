"""What each GPU job of the paper asks SLURM for, read off a dry run through the slurm profile."""

import re

import pytest
import yaml
from snakemake.utils import update_config
from workflow_helpers import ROOT, run_snakemake

from dra.config import job_batches

# rule -> the config.yaml resources: entry it takes threads, GPUs, memory and time from
GPU_RULES = {
    "train_diffusion": "diffusion",
    "train_noisy_classifier": "diffusion",
    "generate_synthetic": "diffusion",
    "extract_features": "diffusion",
    "validate_features": "diffusion",
    "figure_diffusion_representation": "diffusion",
    "generate_imagenet_synthetic_part": "diffusion",
    "extract_imagenet_features": "diffusion",
    "autoattack": "evaluate",
    "reference_autoattack": "evaluate",
    "classification_dimension": "evaluate",
    "figure_representation": "evaluate",
    "zoo_representation": "evaluate",
    "figure6": "evaluate",
    "train_cell": "train",
}


# the paper with an ImageNet folder set, and the mini scale (the only one that trains its own EDM)
SCALES = {
    "paper": "datasets:\n  imagenet:\n    source:\n      path: /data/ILSVRC2012\n",
    "mini": (ROOT / "config" / "mini.yaml").read_text(),
}


@pytest.fixture(scope="module", params=sorted(SCALES))
def scale_jobs(request, tmp_path_factory):
    """(scale config, [(rule, threads, resources, shell command)]) of every job of a scale."""
    overlay = tmp_path_factory.mktemp("overlay") / f"{request.param}.yaml"
    overlay.write_text(SCALES[request.param])
    # --sdm env-modules: this machine has no conda (only the deployment method differs from the
    # profile); --cores: a dry run caps threads at --cores, 1 unless given (snakemake/cli.py),
    # while a SLURM run does not cap them
    result = run_snakemake(ROOT, "all", "all_reference", "all_data", "--configfile", str(overlay),
                           "--profile", "slurm", "--sdm", "env-modules", "--cores", "1000", "--dry-run",
                           "--forceall", timeout=600)
    assert result.returncode == 0, result.stderr
    jobs = []
    for block in re.split(r"\n(?:local)?rule ", result.stdout)[1:]:
        name = block.split(":")[0]
        threads = re.search(r"\n    threads: (\d+)", block)
        resources = re.search(r"\n    resources: (.*)", block)
        pairs = dict(item.split("=", 1) for item in resources[1].split(", ")) if resources else {}
        jobs.append((name, int(threads[1]) if threads else 1, pairs, block.split("Shell command: ")[-1]))
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update(yaml.safe_load(SCALES[request.param]) if request.param == "mini" else {})
    return config, jobs


def merged_config(scale):
    # config.yaml with the scale's overlay merged in as Snakemake merges a --configfile
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(config, yaml.safe_load(SCALES["mini" if scale == "mini" else "paper"]))
    return config


def test_every_gpu_job_asks_for_gpus_once_per_job_with_its_configured_threads(scale_jobs):
    config, jobs = scale_jobs
    batches = job_batches(merged_config(config["scale"]))
    config = config["resources"]  # the mini overlay replaces the whole section
    gpu_rules = {name for name, _, resources, _ in jobs if "gpu" in resources}
    assert gpu_rules <= set(GPU_RULES)
    for name, threads, resources, command in jobs:
        if name not in GPU_RULES:
            continue
        # tasks_per_gpu=0: one SLURM task for all the job's GPUs (torchrun starts one process per GPU),
        # on one node (torchrun --standalone sees only its own node's GPUs)
        assert resources["tasks_per_gpu"] == "0", name
        assert resources["nodes"] == "1", name
        # the batch of every job that is no training cell comes from the plan (dra.gpu_plan), passed by its rule
        if name not in ("train_cell", "figure6", "train_diffusion", "train_noisy_classifier"):
            passed = int(re.search(r"--batch-size (\d+)", command)[1])
            assert passed in {batch for (rule, _), batch in batches.items() if rule == name}, name
        if "--threads" in command:
            assert f"--threads {threads} " in command, name
        if name == "train_cell":
            # the GPUs and memory of a cell are the train rule's own model: at least one GPU on a GPU scale
            # (`auto`: the memory model plans the count, always one or more)
            configured = config["train"]["gpu"]
            assert (int(resources["gpu"]) >= 1) == (configured == "auto" or configured >= 1), name
            continue
        kind = config[GPU_RULES[name]]
        assert resources["gpu"] == str(kind["gpu"]), name
        assert resources["mem_mb"] == str(kind["mem_mb"]), name
        assert threads == kind["cpus"], name


def test_the_gpu_rules_are_all_planned_by_the_paper_or_the_mini_scale(scale_jobs):
    # the paper fetches its EDMs and DM-AT's synthetic sets; the mini scale trains and samples its own
    _, jobs = scale_jobs
    planned = {name for name, _, resources, _ in jobs if "gpu" in resources}
    trained_here = {"train_diffusion", "generate_synthetic"}
    if "train_diffusion" in planned:
        assert trained_here <= planned
    else:
        assert planned == set(GPU_RULES) - trained_here
