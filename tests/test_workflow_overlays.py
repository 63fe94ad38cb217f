"""Each scale plans each documented aggregate target, within its own cells: the short and mini
overlays reach neither ImageNet nor a cell of the paper's scale."""

import re

import pytest
import yaml

from dra import config as cfg
from workflow_helpers import ROOT, run_snakemake

# the targets of README's table ("a cell's path" is planned by tests/test_doc_commands.py)
TARGETS = ["all", "all_tables", "all_figures", "all_features", "all_models", "all_evals", "all_data",
           "all_reference"]
OVERLAYS = {"paper": None, "short": "config/short.yaml", "mini": "config/mini.yaml"}


def scale_config(overlay):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if overlay:
        from snakemake.utils import update_config

        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    return config


# 24 dry runs, about 2-3 s each
@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scale", sorted(OVERLAYS))
def test_each_scale_plans_each_target_within_its_own_cells(scale, target):
    overlay = OVERLAYS[scale]
    args = [target, "--dry-run", "--forceall", "--printshellcmds"] + (["--configfile", overlay] if overlay else [])
    result = run_snakemake(ROOT, *args, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    config = scale_config(overlay)
    own_cells = {cell.id for cell in cfg.table_cells(config) + cfg.figure_cells(config)}
    # train/model.pt of a cell, or of reference/<name> (a converted checkpoint, not a cell)
    trained = [path for path in re.findall(rf"output: results/{config['scale']}/(\S+)/train/model\.pt", result.stdout)
               if not path.startswith(cfg.REFERENCE_PREFIX)]
    assert set(trained) <= own_cells
    assert "rule train_cell" not in result.stdout or trained
    if target == "all_data" and scale == "paper":
        return  # downloads the DINOv3 and LightningDiT weights ahead of the ImageNet folder
    # no ImageNet job without datasets.imagenet.source.path (set in none of these configs)
    assert "imagenet" not in result.stdout.split("Job stats:")[0].replace("not run: set datasets.imagenet", "")
    if scale != "paper" and target != "all_reference":
        # DM-AT's released checkpoints are evaluated at full scale: only when asked for
        assert "rule reference_autoattack" not in result.stdout


CANARY = {"gpu": ["config/canary.yaml"], "cpu": ["config/canary.yaml", "config/canary-cpu.yaml"]}
DOWNLOAD_RULES = ("download_archive", "fetch_synthetic_part", "fetch_diffusion_model", "convert_diffusion_model",
                  "fetch_lightningdit", "download_pretrained", "download_zoo_checkpoint", "prepare_digits")


@pytest.mark.slow
@pytest.mark.parametrize("machine", sorted(CANARY))
def test_the_canary_plans_every_paper_cell_through_the_papers_rules_downloading_nothing(machine):
    overlays = CANARY[machine]
    result = run_snakemake(ROOT, "all_tables", "--dry-run", "--forceall", "--printshellcmds", "--configfile",
                           *overlays, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = result.stdout
    assert not [rule for rule in DOWNLOAD_RULES if f"rule {rule}:" in jobs]
    for rule in ("random_cifar_archive", "random_imagenet_folder", "random_synthetic_part", "random_edm",
                 "random_lightningdit", "random_pretrained", "prepare_cifar", "prepare_imagenet", "prepare_synthetic",
                 "extract_features", "extract_imagenet_features", "generate_imagenet_synthetic_part", "canary"):
        assert f"rule {rule}:" in jobs, rule
    paper = scale_config(None)
    config = scale_config(None)
    from snakemake.utils import update_config

    for overlay in overlays:
        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    # every table cell of the paper (ImageNet's too, on the random folder) is trained and evaluated
    cells = {cell.id: cell for cell in cfg.table_cells(paper)}
    blocks = [block for block in jobs.split("\n\n") if "rule train_cell:" in block]
    trained = {re.search(r"output: results/canary/(\S+)/train/model\.pt", block)[1]: block for block in blocks}
    assert set(trained) == set(cells)
    # on the paper's planned GPUs (torchrun over them) on a GPU cluster, the CPU without
    for cell_id, block in trained.items():
        gpus = cfg.train_plan(paper, cells[cell_id]).gpus if machine == "gpu" else 0
        assert re.search(r"\bgpu=(\d+)", block)[1] == str(gpus), cell_id
        assert (f"--nproc-per-node {gpus}" in block) == (gpus > 1), cell_id
    # the canary table lists the figure cells too
    assert len(re.findall(r"output: results/canary/\S+/canary\.json", jobs)) == len(
        {cell.id for cell in cfg.table_cells(config) + cfg.figure_cells(config)})
