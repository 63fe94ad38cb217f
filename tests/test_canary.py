"""The canary (config/canary.yaml + config/canary-cpu.yaml) on the CPU: all_tables through the paper's
own rules on the random stand-ins, restricted to one cell per architecture family, then the canary
table, the evaluation at eval_n, the random networks at the paper's sizes and the memory table the
canary rewrites."""

import csv
import json
import shutil

import pytest
import yaml

from dra.gpu_plan import read_memory_table
from scripts import canary_table
from workflow_helpers import copy_workflow, run_snakemake

# wrn (DRA targets extracted from a random EDM DDPM++), timm (random DINOv3 ConvNeXt-B on the
# ImageNet-layout JPEG folder, bf16, channels_last, 3-step TRADES, 256x256 images sampled from a random
# LightningDiT-XL/1 and its features as targets), edm_encoder (the random EDM's U-Net up to the DRA layer)
WRN = "cifar10/wrn-28-10/at+dra/nosyn-bs128-ep200"
TIMM = "imagenet/convnext-b/dm-at+dra/syn4m-bs1024-ep100"
ENCODER = "cifar10/edm-encoder/at/nosyn-bs128-ep200"
CELLS = [WRN, TIMM, ENCODER]

# the tables and figures of these cells only, two steps, and stand-ins small enough for 2 cores: 20
# CIFAR and 10 ImageNet training images (10 classes, AutoAttack's fewest; the LightningDiT-XL/1 and
# VA-VAE stay the release's sizes). AutoAttack as the canary overlay runs it (APGD-CE alone) on 2
# points at eps 128/255: a point that two steps of training left correct is broken at once; a point of
# a near-constant random network cannot be, and costs APGD-CE's 5 x 100 steps, not the minutes of
# the targeted attacks, FAB and Square.
OVERLAY = {
    "canary": {"steps": 2},
    "datasets": {
        "cifar10": {"source": {"random": {"train_images": 20, "test_images": 10}}, "eval_n": 2, "eps_255": 128},
        "imagenet": {"num_classes": 10, "source": {"train_images": 10, "val_images": 10}, "eval_n": 2, "eps_255": 128,
                     "synthetic": {"4m": {"generate": {"images_per_class": 1, "num_steps": 2, "parts": 1}}}},
    },
    "diffusion_models": {"edm-cifar10-cond": {"validation": {"train_n": 10, "test_n": 10}}},
    "tables": {
        "table1": {"rows": [{"cell": TIMM, "paper": None}]},
        "table2": {"rows": [{"cell": WRN, "paper": None}]},
        "table3": {"rows": [{"cell": WRN, "paper": None}]},
        "ablations": {"rows": [{"cell": ENCODER, "paper": None}]},
    },
    "figures": {"eval_n": 10, "cknna_topk": 5, "standard": WRN, "adversarial": WRN, "figure1_models": [],
                "figure5_models": [], "figure6_models": [], "figure8_models": [], "figure8_baseline": WRN,
                "figure10_pairs": []},
}


@pytest.mark.slow
def test_canary_runs_the_papers_rules_for_one_cell_per_family_on_the_cpu(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    (workdir / "canary-test.yaml").write_text(yaml.safe_dump(OVERLAY))
    # 12 minutes alone on 2 cores; beside the mini reproduction and the unit tests (CI) more than 30
    result = run_snakemake(workdir, "all_tables", "--configfile", "config/canary.yaml", "config/canary-cpu.yaml",
                           "canary-test.yaml", "--cores", "2", timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    results = workdir / "results/canary"

    # the canary table: every cell passed, with a step time and memory per image
    with open(results / "canary.csv") as handle:
        shown = {row["cell"]: row for row in csv.DictReader(handle)}
    assert sorted(shown) == sorted(CELLS)
    rows = [json.loads((results / cell / "canary.json").read_text()) for cell in CELLS]
    table = read_memory_table(workdir / "config/data/memory_per_image.csv")
    for cell, row in zip(CELLS, rows):
        assert row["cell"] == cell and row["passed"] and shown[cell]["passed"] == "True", row["error"]
        assert row["device"] == "cpu" and (row["micro_batch"], row["steps"], row["planned_gpus"]) == (2, 2, 0)
        assert row["step_seconds"] > 0 and row["saved_mib_per_image"] > 0
        # the tensors one graph keeps for backward fit in the process's peak memory
        assert row["peak_memory_mib"] > row["saved_mib_per_image"] * row["micro_batch"]
        # the same measurement as the memory table's CPU rows (taken with a DRA head, hence the slack)
        expected = table[(row["arch"], row["image_size"], row["precision"])]
        assert row["saved_mib_per_image"] == pytest.approx(expected.saved_bytes_per_image / 2**20, rel=0.02)
    # WRN-28-10 + DRA head (256-d EDM target)
    assert rows[0]["parameters"] == table[("wrn-28-10", 32, "fp32")].parameters

    # the real training jobs: canary.steps (2) steps of canary.batch_size (2) images, one epoch
    for cell in CELLS:
        recipe = yaml.safe_load((results / cell / "recipe.yaml").read_text())
        assert (recipe["epochs"], recipe["batch_size"], recipe["data"]["epoch_reference_size"]) == (1, 2, 4)
        with open(results / cell / "train/log.csv") as handle:
            log = list(csv.DictReader(handle))
        assert len(log) == 1 and int(log[0]["step"]) == 2
    # AutoAttack on eval_n test images; Tables 1-3 and the ablations built from them
    for cell in CELLS:
        assert json.loads((results / cell / "autoattack.json").read_text())["n"] == 2
    for name in ("table1", "table2", "table3", "ablations"):
        assert (results / "tables" / f"{name}.md").is_file()

    # the random networks are the paper's: EDM DDPM++ with 55.7M parameters (Karras et al. 2022, EDM,
    # Table 7: CIFAR-10 DDPM++ config F), LightningDiT-XL/1: 675M (Yao et al. 2025), its 28 blocks of width 1152
    import torch

    from dra.diffusion.checkpoint import load_edm
    from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, count_parameters

    edm = load_edm(results / "data/diffusion/edm-cifar10-cond/model.safetensors")
    assert sum(p.numel() for p in edm.parameters()) == pytest.approx(55.7e6, abs=0.05e6)
    dit = torch.load(results / "data/diffusion/lightningdit-xl/dit.pt", weights_only=True, mmap=True)["ema"]
    assert dit["x_embedder.proj.weight"].shape[0] == 1152 and sum(k.endswith(".attn.qkv.weight") for k in dit) == 28
    assert count_parameters(LIGHTNINGDIT_XL_1) == pytest.approx(675e6, rel=0.01)

    # the passed cells' measurements rewrite the GPU plan's memory table
    memory_table = tmp_path / "memory.csv"
    shutil.copy(workdir / "config/data/memory_per_image.csv", memory_table)
    canary_table.main(["--cells", *(str(results / cell / "canary.json") for cell in CELLS),
                       "--out-csv", str(tmp_path / "canary.csv"), "--out-md", str(tmp_path / "canary.md"),
                       "--memory-table", str(memory_table), "--measured", "test"])
    rewritten = read_memory_table(memory_table)
    assert rewritten.keys() == table.keys()
    for row in rows:
        entry = rewritten[(row["arch"], row["image_size"], row["precision"])]
        assert entry.measured == "cpu test" and entry.gpu_seconds_per_image is None  # a CPU time plans no GPU
        assert entry.saved_bytes_per_image == pytest.approx(row["saved_mib_per_image"] * 2**20, abs=0.06 * 2**20)
