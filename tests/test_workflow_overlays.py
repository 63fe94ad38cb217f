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
