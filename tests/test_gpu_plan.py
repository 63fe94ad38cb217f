"""GPUs and micro-batches per training cell from the memory model (dra.gpu_plan), and the paper's
dry run showing them."""

import copy
import math
import re

import pytest
import torch
import yaml
from workflow_helpers import ROOT, run_snakemake

from dra import config as cfg
from dra.config import job_batches, job_plans
from dra.gpu_plan import (
    BYTES_PER_PARAMETER,
    GIB,
    MIB,
    PlanError,
    bytes_per_gpu,
    graphs_kept,
    images_computed,
    job_bytes,
    micro_batch_images,
    precision_name,
    read_job_table,
    read_memory_table,
)

PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())
TABLE = read_memory_table(ROOT / PAPER["hardware"]["memory_per_image"])


def with_hardware(memory_gib, gpus_per_node, gpu="auto"):
    config = copy.deepcopy(PAPER)
    config["hardware"].update(gpu_memory_gib=memory_gib, gpus_per_node=gpus_per_node)
    config["resources"]["train"]["gpu"] = gpu
    if memory_gib < 80:
        config["recipes"]["cifar10"]["wrn-70-16"].update(SMALL_GPU_WRN_70_16)
    return config


# One BatchNorm group of 128 WRN-70-16 images needs 34.4 GiB (2 x 121.2 MiB x 128 + 16 bytes x 273.6M
# parameters), over the 32 GiB usable of a 40 GB GPU: there the group must be smaller
SMALL_GPU_WRN_70_16 = {"batchnorm_group": 64}


def planned_cells(config):
    return {cell.id: cell for cell in cfg.table_cells(config) + cfg.figure_cells(config)}.values()


def estimate(config, cell, micro_batch):
    recipe = config["recipes"][cell.dataset][cell.arch]
    row = TABLE[(cell.arch, config["datasets"][cell.dataset]["image_size"], precision_name(recipe["precision"]))]
    graphs = graphs_kept(config["methods"][cell.method]["objective"])
    return bytes_per_gpu(row, graphs, micro_batch, recipe["precision"]["bf16"])


@pytest.mark.parametrize("memory_gib,gpus_per_node", [(80, 8), (40, 4)])
def test_every_planned_cell_fits_its_gpus_with_the_fewest_gpus_and_micro_batches(memory_gib, gpus_per_node):
    config = with_hardware(memory_gib, gpus_per_node)
    cfg.validate_config(config)
    usable = memory_gib * GIB * (1 - config["hardware"]["headroom_fraction"])
    cells = list(planned_cells(config))
    assert len(cells) == 30  # 24 table cells and the lambda sweep of Figure 8
    for cell in cells:
        plan = cfg.train_plan(config, cell)
        group = config["recipes"][cell.dataset][cell.arch]["batchnorm_group"]
        chunks = plan.gpus * plan.accumulation_steps
        assert 1 <= plan.gpus <= gpus_per_node
        # runs of whole BatchNorm groups, the first ones the longest: ceil(groups / chunks) groups
        unit = group or 1
        assert plan.micro_batch == min(cell.batch_size, math.ceil(math.ceil(cell.batch_size / unit) / chunks) * unit)
        if group is not None and plan.micro_batch < cell.batch_size:
            assert plan.micro_batch % group == 0, cell.id
        assert plan.bytes_per_gpu == pytest.approx(estimate(config, cell, plan.micro_batch))
        assert plan.bytes_per_gpu <= usable, cell.id
        # the fewest GPUs without accumulation (else the most GPUs that each get a BatchNorm group, with
        # the fewest micro-batches)...
        def fits(chunks, cell=cell, group=group):
            images = micro_batch_images(cell.batch_size, chunks, group)
            return images is not None and estimate(config, cell, images) <= usable

        counts = [g for g in range(1, gpus_per_node + 1) if micro_batch_images(cell.batch_size, g, group) is not None]
        fewest = next((g for g in counts if fits(g)), None)
        first = (fewest, 1) if fewest else (counts[-1], next(k for k in range(2, cell.batch_size)
                                                             if fits(counts[-1] * k)))
        # ...moved to a divisor of the node's GPUs where that computes no more images per step
        assert gpus_per_node % plan.gpus == 0 or (plan.gpus, plan.accumulation_steps) == first, cell.id
        assert (images_computed(cell.batch_size, plan.gpus, plan.accumulation_steps, group)
                <= images_computed(cell.batch_size, *first, group)), cell.id
        if plan.accumulation_steps > 1:  # one micro-batch fewer would not fit
            fewer = micro_batch_images(cell.batch_size, plan.gpus * (plan.accumulation_steps - 1), group)
            assert estimate(config, cell, fewer) > usable, cell.id
        assert cfg.resolve_recipe(config, cell)["accumulation_steps"] == plan.accumulation_steps


def test_known_plans_from_the_measured_per_image_memory():
    # WRN-28-10, TRADES (2 graphs) at batch 2048: 2 x 28.2 MiB x 1024 images + 16 bytes x 42.5M
    # parameters = 57.0 GiB on each of 2 GPUs; one GPU would need 113 GiB of the 64 usable
    cell = cfg.parse_cell("cifar10/wrn-28-10/dm-at/syn20m-bs2048-ep2400")
    plan = cfg.train_plan(PAPER, cell)
    assert (plan.gpus, plan.accumulation_steps, plan.micro_batch) == (2, 1, 1024)
    assert plan.bytes_per_gpu == pytest.approx(2 * 28.2 * MIB * 1024 + 16 * 42512858)
    assert plan.bytes_per_gpu / GIB == pytest.approx(57.0, abs=0.05)
    # ConvNeXt-B on ImageNet under 4 x 40 GB: 4 GPUs are not enough for 256 images each, so
    # 2 micro-batches of 128 per GPU (2 x 112.1 MiB x 128 + 18 bytes x 97.2M = 29.7 GiB of 32)
    small = with_hardware(40, 4)
    plan = cfg.train_plan(small, cfg.parse_cell("imagenet/convnext-b/dm-at+dra/syn4m-bs1024-ep100"))
    assert (plan.gpus, plan.accumulation_steps, plan.micro_batch) == (4, 2, 128)
    # WRN-70-16 (TRADES, batch 1024): 5 GPUs of 80 GiB would hold 205 images each (1,025 computed per
    # step) and leave 3 of a node's 8 idle; 8 GPUs of 128 compute 1,024 and pack the node
    plan = cfg.train_plan(PAPER, cfg.parse_cell("cifar10/wrn-70-16/dm-at/syn50m-bs1024-ep2000"))
    assert (plan.gpus, plan.accumulation_steps, plan.micro_batch) == (8, 1, 128)
    assert bytes_per_gpu(TABLE[("wrn-70-16", 32, "fp32")], 2, 205, False) <= 64 * GIB  # 5 would fit
    assert bytes_per_gpu(TABLE[("wrn-70-16", 32, "fp32")], 2, 256, False) > 64 * GIB   # 4 would not
    # a fixed GPU count (config/short.yaml's one GPU): only the accumulation is planned
    plan = cfg.train_plan(with_hardware(80, 8, gpu=1), cell)
    assert (plan.gpus, plan.accumulation_steps, plan.micro_batch) == (1, 2, 1024)


def test_a_gpu_too_small_for_one_image_and_a_missing_table_row_stop_with_the_keys(tmp_path):
    # WRN-28-10, one BatchNorm group of 128: 2 x 28.2 MiB x 128 + 16 bytes x 42.5M parameters = 7.7 GiB,
    # over 80% of 5 GiB
    with pytest.raises(cfg.ConfigError, match=r"hardware / resources.train: cell cifar10/wrn-28-10/dm-at/syn20m-bs2048-"
                                              r"ep2400: 128 image\(s\) of wrn-28-10 \(one BatchNorm group, recipe key "
                                              r"batchnorm_group\) need 7.7 GiB, more than the 4.0 GiB usable"):
        cfg.validate_config(with_hardware(5, 8))
    # WRN-70-16 with groups of one image: 16 bytes x 273.6M parameters + 2 x 121.2 MiB = 4.3 GiB
    config = with_hardware(5, 8)
    for recipes in config["recipes"].values():
        for recipe in recipes.values():
            recipe["batchnorm_group"] = 1 if recipe["batchnorm_group"] else None
    with pytest.raises(cfg.ConfigError, match=r"cell cifar10/wrn-70-16/dm-at/syn50m-bs1024-ep2000: 1 image\(s\) of "
                                              r"wrn-70-16 .* need 4.3 GiB, more than the 4.0 GiB usable"):
        cfg.validate_config(config)
    config = with_hardware(80, 8)
    table = tmp_path / "table.csv"
    lines = (ROOT / PAPER["hardware"]["memory_per_image"]).read_text().splitlines()
    table.write_text("\n".join(line for line in lines if not line.startswith("vit-b-2,")) + "\n")
    config["hardware"]["memory_per_image"] = str(table)
    with pytest.raises(cfg.ConfigError, match=r"no row for arch vit-b-2 at 32x32 in fp32.*run the canary"):
        cfg.validate_config(config)


def test_paper_dry_run_shows_each_cells_gpus(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("datasets:\n  imagenet:\n    source:\n      path: /data/ILSVRC2012\n"
                       "hardware: {gpu_memory_gib: 40, gpus_per_node: 4}\n"
                       "recipes: {cifar10: {wrn-70-16: {batchnorm_group: 64}}}\n")
    result = run_snakemake(ROOT, "all_models", "--configfile", str(overlay), "--dry-run", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = with_hardware(40, 4)
    shown = {}
    for job in result.stdout.split("rule train_cell:")[1:]:
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"wildcards: (.*)", job)[1]))
        gpus = int(re.search(r"resources: .*\bgpu=(\d+)", job)[1])
        shown[f"{wildcards['dataset']}/{wildcards['arch']}/{wildcards['method']}/{wildcards['budget']}"] = gpus
    expected = {cell.id: cfg.train_plan(config, cell).gpus for cell in cfg.table_cells(config)}
    assert shown == expected
    assert set(shown.values()) == {1, 2, 4}  # cells differ: one global GPU count could not serve them


def test_measured_gpu_seconds_give_runtime_and_gpu_hours_marked_canary(tmp_path):
    import subprocess
    import sys

    # a GPU canary measured 2 ms per WRN-28-10 image: its cells take their time from it, the rest from FLOPs
    lines = (ROOT / PAPER["hardware"]["memory_per_image"]).read_text().splitlines()
    table = tmp_path / "table.csv"
    table.write_text("\n".join(line.replace(",,cpu", ",0.002,cuda") if line.startswith("wrn-28-10,") else line
                               for line in lines) + "\n")
    config = copy.deepcopy(PAPER)
    config["hardware"]["memory_per_image"] = str(table)
    cell = cfg.parse_cell("cifar10/wrn-28-10/dm-at/syn20m-bs2048-ep2400")
    plan = cfg.train_plan(config, cell)
    # 60000 steps x 1024 images per GPU x 2 ms x 1.5 (validation, checkpoints, loading) = 3072 minutes
    assert (plan.steps, plan.runtime_minutes) == (60000, 3072)
    assert cfg.train_plan(config, cfg.parse_cell("cifar10/vit-b-2/dm-at/syn50m-bs1024-ep2000")).runtime_minutes is None

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"hardware": {"memory_per_image": str(table)}}))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_hours.py"), "--configfile", str(overlay),
                             "--gpu", "h100-sxm"], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.startswith(("cifar", "imagenet"))}
    # 122.9M images x 2 ms = 68 GPU-hours, one number, marked canary
    assert rows[cell.id][-1] == "canary" and rows[cell.id][5] == "68-68"
    # ViT-B/2 keeps the FLOP estimate: its PFLOP over the H100's dense FP32 peak (67 TFLOP/s; fp32
    # matrix products do not use TF32 by default) at 50% and at 20% of it
    vit = rows["cifar10/vit-b-2/dm-at/syn50m-bs1024-ep2000"]
    assert vit[-1] == "FLOPs" and vit[3] == "fp32"
    low, high = (int(v) for v in vit[5].split("-"))
    assert low == pytest.approx(int(vit[2]) * 1e15 / (67e12 * 0.5) / 3600, abs=1)
    assert high == pytest.approx(int(vit[2]) * 1e15 / (67e12 * 0.2) / 3600, abs=1)
    assert re.search(r"total GPU-hours on h100-sxm: \d+ to \d+", result.stdout)


# ---------------------------------------------------------------------------- every other GPU job

JOB_TABLE = read_job_table(ROOT / PAPER["hardware"]["job_memory_per_image"])
PAPER_GPU_RULES = {"autoattack", "reference_autoattack", "classification_dimension", "figure_representation",
                   "zoo_representation", "figure_diffusion_representation", "extract_features", "validate_features",
                   "extract_imagenet_features", "generate_imagenet_synthetic_part", "train_noisy_classifier"}


@pytest.mark.parametrize("memory_gib,gpus_per_node", [(80, 8), (40, 4)])
def test_every_gpu_job_gets_the_largest_batch_that_fits_one_gpu(memory_gib, gpus_per_node):
    config = with_hardware(memory_gib, gpus_per_node)
    cfg.validate_config(config)  # the config check plans every job first
    usable = memory_gib * GIB * (1 - config["hardware"]["headroom_fraction"])
    plans = job_plans(config)
    assert {plan.job.rule for plan in plans} == PAPER_GPU_RULES
    for plan in plans:
        job, row = plan.job, JOB_TABLE[plan.job.key]
        assert plan.bytes_per_gpu == pytest.approx(row.bytes_per_image * plan.batch
                                                   + row.parameters * BYTES_PER_PARAMETER[job.mode])
        assert 1 <= plan.batch <= job.images and plan.bytes_per_gpu <= usable, job
        if job.fixed_batch is not None:  # the noisy classifier trains at its configured batch
            assert plan.batch == job.fixed_batch
        elif plan.batch < job.images:  # one image more would not fit
            assert job_bytes(row, job.mode, plan.batch + 1) > usable, job


def test_known_job_batches_from_the_measured_table():
    # AutoAttack of ConvNeXt-B at 224x224 on 80 GiB: (64 GiB usable - 4 bytes x its parameters) / its
    # attack graph per image (116.75 MiB): 558 images; on 40 GiB half as many (the old script default,
    # 500, would not fit there)
    row = JOB_TABLE[("convnext-b", 224, "fp32", "attack")]
    batches = job_batches(PAPER)
    assert batches[("autoattack", "convnext-b")] == math.floor((64 * GIB - 4 * row.parameters) / row.bytes_per_image)
    assert job_batches(with_hardware(40, 4))[("autoattack", "convnext-b")] < 500 < batches[("autoattack", "convnext-b")]
    # on the CPU (resources gpu: 0) every job takes hardware.cpu_batch_size, at most its images
    cpu = copy.deepcopy(PAPER)
    for family in ("evaluate", "diffusion"):
        cpu["resources"][family]["gpu"] = 0
    cpu_batches = job_batches(cpu)
    assert cpu_batches[("autoattack", "convnext-b")] == PAPER["hardware"]["cpu_batch_size"]
    assert cpu_batches[("train_noisy_classifier", "noisy-cifar10")] == 512  # its configured batch


def test_a_gpu_job_without_a_table_row_or_too_large_stops_with_the_keys(tmp_path):
    table = tmp_path / "jobs.csv"
    lines = (ROOT / PAPER["hardware"]["job_memory_per_image"]).read_text().splitlines()
    table.write_text("\n".join(line for line in lines if not line.startswith("lightningdit-xl,256,fp32,sample"))
                     + "\n")
    config = copy.deepcopy(PAPER)
    config["hardware"]["job_memory_per_image"] = str(table)
    with pytest.raises(cfg.ConfigError, match=r"resources.evaluate, resources.diffusion: .*no row for network "
                                              r"lightningdit-xl at 256x256 in mode sample .*benchmarks/job_memory.py"):
        cfg.validate_config(config)
    # the noisy classifier's configured batch must fit: 512 x 50.86 MiB + 16 bytes x 55.7M parameters
    # = 26.3 GiB, over the 24 GiB usable of a 30 GiB GPU
    small = copy.deepcopy(PAPER)
    small["hardware"]["gpu_memory_gib"] = 30
    small["resources"]["train"]["gpu"] = 0
    with pytest.raises(PlanError, match=r"train_noisy_classifier .*configured batch of 512 needs 26.3 GiB, more than "
                                        r"the 24.0 GiB usable"):
        job_plans(small)
    # one image that does not fit: LightningDiT-XL and its VA-VAE hold 2.8 GiB of weights, an image 0.16 GiB
    small["hardware"]["gpu_memory_gib"] = 2
    with pytest.raises(PlanError, match=r"one image of lightningdit-xl in mode infer needs 2.9 GiB"):
        job_plans(small)


def test_peak_live_bytes_counts_forward_and_backward_tensors():
    from dra.job_memory import bytes_per_image, peak_live_bytes

    x = torch.rand(1000)  # 4000 bytes, made before the count: not counted
    with torch.no_grad():
        # x * 2 and (x * 2) + 1 are alive together; then the first is freed before the sum
        assert peak_live_bytes(lambda: (x * 2 + 1).sum()) == 2 * x.nbytes

    def squared_gradient():
        z = x.clone().requires_grad_(True)
        return torch.autograd.grad((z * z).sum(), z)[0]

    # forward: z and z * z (the sum saves nothing); backward adds grad * z twice before their sum
    assert peak_live_bytes(squared_gradient) >= 3 * x.nbytes
    # a linear layer under no_grad keeps its output, 4 bytes x 1000 features per image
    layer = torch.nn.Linear(100, 1000).requires_grad_(False)

    def run_at(batch):
        images = torch.rand(batch, 100)
        return lambda: layer(images)

    assert bytes_per_image(run_at) == 4 * 1000
