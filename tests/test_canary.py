"""The canary (config/canary.yaml + config/canary-cpu.yaml) on the CPU: all_tables through the paper's
own rules on the random stand-ins, restricted to one cell per architecture family, then the canary
table, the evaluation at eval_n, the random EDM at the paper's size and the memory table the canary
rewrites; the ImageNet cell on a smaller LightningDiT and VA-VAE of the release's classes (TEST_DIT,
TEST_VAE), the user's canary writing the release's sizes checked on the meta device."""

import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from dra.gpu_plan import read_memory_table
from scripts import canary_table
from workflow_helpers import ROOT, copy_workflow, run_snakemake

# wrn (DRA targets extracted from a random EDM DDPM++), timm (random DINOv3 ConvNeXt-B on the
# ImageNet-layout JPEG folder, channels_last, 3-step TRADES, 256x256 images sampled from a random
# LightningDiT-XL/1 and its features as targets), edm_encoder (the random EDM's U-Net up to the DRA layer)
WRN = "cifar10/wrn-28-10/at+dra/nosyn-bs128-ep200"
TIMM = "imagenet/convnext-b/dm-at+dra/syn4m-bs1024-ep100"
ENCODER = "cifar10/edm-encoder/at/nosyn-bs128-ep200"
CELLS = [WRN, TIMM, ENCODER]
# What differs from config/canary.yaml: the ImageNet cell's LightningDiT is 4 blocks of width 128 (XL/1:
# 28 of 1152; 0.9M parameters, not 675M) and its VA-VAE 32 base channels with one residual block per
# level (f16d32: 128 and 2), the release's classes with their defaults otherwise: the same 256x256
# images, 16x16x32 latents and 256 tokens through the same rules, at a small part of XL/1's CPU-minutes
# (benchmarks/canary_imagenet_networks.py). That the user's canary writes and loads the release's
# sizes is checked on the meta device below (test_the_canary_overlay_builds_lightningdit_xl1_and_vavae_f16d32).
TEST_DIT = {"hidden_size": 128, "depth": 4, "num_heads": 2}
TEST_VAE = {"ch": 32, "num_res_blocks": 1}

# the tables and figures of these cells only, two steps, and stand-ins small enough for 2 cores: 20
# CIFAR and 10 ImageNet training images (10 classes, AutoAttack's fewest; the LightningDiT and VA-VAE
# above). Every job on one thread, two at a time (--cores 2): the test runs beside the mini reproduction
# and the unit tests, where a 2-thread job waits on its second thread. AutoAttack as the canary overlay
# runs it (APGD-CE alone) on 2 points at eps 128/255: a point that two steps of training left correct is
# broken at once; a point of a near-constant random network cannot be, and costs APGD-CE's 5 x 100
# steps, not the minutes of the targeted attacks, FAB and Square.
OVERLAY = {
    "canary": {"steps": 2},
    "resources": {"train": {"cpus": 1}, "evaluate": {"cpus": 1}, "diffusion": {"cpus": 1}},
    # the end-of-epoch validation's PGD in 2 steps, not 40: on the 4 held-out images it was 3-4 times
    # the two training steps of the 55.7M EDM encoder and of WRN-28-10 (ImageNet holds out none)
    "recipes": {"cifar10": {arch: {"validation": {"attack_steps": 2}} for arch in ("wrn-28-10", "edm-encoder")},
                # ConvNeXt-B in fp32, not the paper's bf16: this CPU has no bf16 instructions (AVX-512 BF16, AMX),
                # and torch's fallback took 112 CPU-seconds for a forward and backward of 2 images, fp32 4; its
                # training job alone ran past 11 CPU-minutes. The bf16 training step (autocast, channels_last,
                # online DRA targets) is tests/test_training_loop.py's; its memory row is the table's fp32 one.
                "imagenet": {"convnext-b": {"precision": {"bf16": False}}}},
    "datasets": {
        "cifar10": {"source": {"random": {"train_images": 20, "test_images": 10}}, "eval_n": 2, "eps_255": 128},
        "imagenet": {"num_classes": 10, "source": {"train_images": 10, "val_images": 10}, "eval_n": 2, "eps_255": 128,
                     "synthetic": {"4m": {"generate": {"images_per_class": 1, "num_steps": 2, "parts": 1}}}},
    },
    "diffusion_models": {
        "edm-cifar10-cond": {"validation": {"train_n": 10, "test_n": 10}},
        # LightningDiT and VA-VAE of the release's classes at the release's image, latent and token
        # shapes (256x256, 16x16x32, 256 tokens), narrower and shallower; the feature read from the middle
        # block, as layer 14 of 28 is, with two channels zeroed as the release's two are
        "lightningdit-xl": {"source": {"dit_config": TEST_DIT, "vae_config": TEST_VAE},
                            "feature": {"layer": 2, "zero_channels": [5, 77]}},
    },
    "tables": {
        "table1": {"rows": [{"cell": TIMM, "paper": None}]},
        "table2": {"rows": [{"cell": WRN, "paper": None}]},
        "table3": {"rows": [{"cell": WRN, "paper": None}]},
        "ablations": {"rows": [{"cell": ENCODER, "paper": None}]},
    },
    # the classification dimension's PGD in 2 steps, not 20: its job on WRN-28-10 took 65 of the canary jobs'
    # 276 CPU-seconds for the 10 points; the rule, its inputs and outputs are the same
    "classification_dimension": {"attack": {"steps": 2}},
    "figures": {"eval_n": 10, "cknna_topk": 5, "standard": WRN, "adversarial": WRN, "figure1_models": [],
                "figure5_models": [], "figure6_models": [], "figure8_models": [], "figure8_baseline": WRN,
                "figure10_pairs": []},
}


@pytest.mark.slow
def test_canary_runs_the_papers_rules_for_one_cell_per_family_on_the_cpu(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    (workdir / "canary-test.yaml").write_text(yaml.safe_dump(OVERLAY))
    # minutes alone; beside the mini reproduction and the unit tests (CI) several times that
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

    # the random EDM is the paper's: DDPM++ with 55.7M parameters (Karras et al. 2022, EDM, Table 7:
    # CIFAR-10 DDPM++ config F); the LightningDiT the overlay's (XL/1 in the user's canary: the meta test below)
    import torch

    from dra.diffusion.checkpoint import load_edm

    edm = load_edm(results / "data/diffusion/edm-cifar10-cond/model.safetensors")
    assert sum(p.numel() for p in edm.parameters()) == pytest.approx(55.7e6, abs=0.05e6)
    dit = torch.load(results / "data/diffusion/lightningdit-xl/dit.pt", weights_only=True)["ema"]
    assert dit["x_embedder.proj.weight"].shape[:2] == (TEST_DIT["hidden_size"], 32)  # 32 latent channels, as f16d32
    assert sum(k.endswith(".attn.qkv.weight") for k in dit) == TEST_DIT["depth"]

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


@pytest.mark.slow  # a dry run: seconds
def test_the_canary_overlay_builds_lightningdit_xl1_and_vavae_f16d32(tmp_path, monkeypatch):
    """The user's canary (config/canary.yaml, on the CPU with canary-cpu.yaml) at the release's sizes: rule
    random_lightningdit's own command, as a dry run prints it, run on the meta device with its saves
    captured (XL/1 is 2.7 GB on disk and minutes per image on the CPU: the end-to-end test above runs
    smaller networks of the same classes through the same rules)."""
    import torch

    from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, LightningDiT
    from dra.diffusion.vavae import VAVAE, VAVAE_F16D32
    from scripts import random_lightningdit

    target = "results/canary/data/diffusion/lightningdit-xl/dit.pt"
    result = run_snakemake(ROOT, target, "--dry-run", "--forceall", "--printshellcmds", "--configfile",
                           "config/canary.yaml", "config/canary-cpu.yaml", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    [command] = [line[line.index("python -m"):] for line in result.stdout.splitlines()
                 if "python -m scripts.random_lightningdit " in line]
    argv = shlex.split(command.split(" 2> ")[0])[3:]
    assert not {"--dit-config", "--vae-config"} & set(argv)  # the release's sizes, no network of the config's
    outputs = {flag: argv[argv.index(flag) + 1] for flag in ("--out-dit", "--out-vae", "--out-latent-stats")}
    for flag in outputs:
        argv[argv.index(flag) + 1] = str(tmp_path / flag.removeprefix("--out-"))

    saved = {}

    def capture(obj, path):  # path: atomic_file's temporary sibling, ".tmp-<hex>-<name>"
        saved[Path(path).name.split("-", 2)[2]] = obj
        Path(path).write_bytes(b"")

    monkeypatch.setattr(torch, "save", capture)
    with torch.device("meta"):
        random_lightningdit.main(argv)
    dit, vae, stats = saved["dit"]["ema"], saved["vae"]["state_dict"], saved["latent-stats"]
    with torch.device("meta"):
        expected_dit = LightningDiT(**LIGHTNINGDIT_XL_1).state_dict()
        expected_vae = VAVAE(**VAVAE_F16D32).state_dict()
    assert {k: v.shape for k, v in dit.items()} == {k: v.shape for k, v in expected_dit.items()}
    assert {k: v.shape for k, v in vae.items()} == {k: v.shape for k, v in expected_vae.items()}
    # LightningDiT-XL/1 (Yao et al. 2025): 28 blocks of width 1152, 675M parameters (the exact count:
    # tests/test_imagenet_lightningdit.py); VA-VAE f16d32: 32 latent channels
    assert dit["x_embedder.proj.weight"].shape[0] == 1152 and sum(k.endswith(".attn.qkv.weight") for k in dit) == 28
    assert sum(v.numel() for k, v in dit.items() if not k.startswith("feat_rope")) == pytest.approx(675e6, rel=0.01)
    assert stats["mean"].shape == stats["std"].shape == (1, 32, 1, 1)
    assert outputs["--out-dit"] == target
