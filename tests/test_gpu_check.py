"""benchmarks/gpu_check.py end to end on the CPU's small stand-ins: every stage runs and reports, and
the memory-table rows it writes have the GPU plan's columns and say they are stand-ins."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dra.gpu_plan import TABLE_COLUMNS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu_stand_ins(tmp_path):
    out = tmp_path / "rows.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--out", str(out), "--threads", "1"], env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with out.open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == TABLE_COLUMNS
    assert sorted(row["arch"] for row in rows) == ["edm-encoder-cpu-stand-in", "vit-b-2-cpu-stand-in",
                                                   "wrn-70-16-cpu-stand-in"]
    assert all(float(row["saved_mib_per_image"]) > 0 and row["gpu_seconds_per_image"] == "" for row in rows)
    report = json.loads(out.with_suffix(".json").read_text())
    # each family's canary stepped, saved its state and validated one chunk of its micro-batch
    assert [(c["family"], c["passed"], c["validated_images"]) for c in report["cells"]] == \
        [("wrn", True, 2), ("timm", True, 2), ("edm_encoder", True, 2)]
    assert set(report["images_per_second"]) == {"fp32", "bf16", "bf16+channels_last"}  # no TF32, no compile on a CPU
    assert report["autoattack"]["images"] == 2 and report["autoattack"]["attacks"]
    assert {name: r["network_evaluations"] for name, r in report["sampling"].items()} == {"edm": 2, "lightningdit": 2}
    assert "GPU check on cpu" in result.stdout and "small stand-ins, not for config/data" in result.stdout
