"""The canary (config/canary.yaml) on the CPU: one cell per architecture family through the
canary_cell rule, at the paper's real shapes, then its table and the memory table it rewrites."""

import csv
import json
import shutil

import pytest

from dra.gpu_plan import read_memory_table
from scripts import canary_table
from workflow_helpers import copy_workflow, run_snakemake

# wrn (with DRA targets from a random EDM DDPM++), timm (ImageNet JPEG folder, bf16, channels_last,
# 3-step TRADES, 256x256 synthetic images), edm_encoder (the EDM U-Net up to the DRA layer)
CELLS = ["cifar10/wrn-28-10/at+dra/nosyn-bs128-ep200", "imagenet/convnext-b/dm-at/syn4m-bs1024-ep100",
         "cifar10/edm-encoder/at/nosyn-bs128-ep200"]


@pytest.mark.slow
def test_canary_runs_one_cell_per_family_on_the_cpu_and_measures_its_memory(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    targets = [f"results/canary/{cell}/canary.json" for cell in CELLS]
    result = run_snakemake(workdir, *targets, "--configfile", "config/canary.yaml", "config/canary-cpu.yaml",
                           "--cores", "2", timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads((workdir / target).read_text()) for target in targets]
    table = read_memory_table(workdir / "config/data/memory_per_image.csv")
    for cell, row in zip(CELLS, rows):
        assert row["cell"] == cell and row["passed"], row["error"]
        assert row["device"] == "cpu" and row["micro_batch"] == 2 and row["planned_gpus"] == 0
        assert row["step_seconds"] > 0
        # the tensors one graph keeps for backward fit in the process's peak memory
        assert row["peak_memory_mib"] > row["saved_mib_per_image"] * row["micro_batch"]
        # the same measurement as the memory table's CPU rows (taken with a DRA head, hence the slack)
        expected = table[(row["arch"], row["image_size"], row["precision"])]
        assert row["saved_mib_per_image"] == pytest.approx(expected.saved_bytes_per_image / 2**20, rel=0.02)
    assert rows[0]["parameters"] == table[("wrn-28-10", 32, "fp32")].parameters  # WRN-28-10 + DRA head (256-d EDM target)

    memory_table = tmp_path / "memory.csv"
    shutil.copy(workdir / "config/data/memory_per_image.csv", memory_table)
    canary_table.main(["--cells", *(str(workdir / t) for t in targets), "--out-csv", str(tmp_path / "canary.csv"),
                       "--out-md", str(tmp_path / "canary.md"), "--memory-table", str(memory_table),
                       "--measured", "test"])
    with open(tmp_path / "canary.csv") as handle:
        shown = list(csv.DictReader(handle))
    assert [r["cell"] for r in shown] == CELLS and all(r["passed"] == "True" for r in shown)
    rewritten = read_memory_table(memory_table)
    assert rewritten.keys() == table.keys()
    for row in rows:
        entry = rewritten[(row["arch"], row["image_size"], row["precision"])]
        assert entry.measured == "cpu test" and entry.gpu_seconds_per_image is None  # a CPU time plans no GPU
        assert entry.saved_bytes_per_image == pytest.approx(row["saved_mib_per_image"] * 2**20, abs=0.06 * 2**20)
