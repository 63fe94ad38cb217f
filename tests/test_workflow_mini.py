"""README's main job: the mini reproduction, every rule, offline, then its tables checked.

Runs `snakemake all --cores 2 --configfile config/mini.yaml` in a copy of the workflow (so the
checkout's results/ is left alone) and reads what it produced.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workflow_helpers import copy_workflow, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("mini"))
    # about 17 minutes alone on 2 cores; in CI it shares them with the other worker's tests (the canary
    # first), which made 40 minutes too few there
    result = run_snakemake(work, "all", "--cores", "2", "--configfile", "config/mini.yaml", timeout=4800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return work / "results" / "mini"


def autoattack(mini, method, budget):
    return json.loads((mini / f"digits/wrn-10-1/{method}/{budget}/autoattack.json").read_text())


def test_mini_eps_breaks_standard_training_but_not_adversarial_training(mini):
    # the mini eps is chosen so that this holds (config/mini.yaml)
    standard = autoattack(mini, "st", "nosyn-bs128-ep30")
    adversarial = autoattack(mini, "at", "nosyn-bs128-ep30")
    assert standard["clean_accuracy"] > 90
    assert standard["robust_accuracy"] < 20
    assert adversarial["robust_accuracy"] > 40
    assert standard["n"] == adversarial["n"] == 100
    assert adversarial["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_mini_tables_hold_our_numbers_for_every_row(mini):
    table2 = pd.read_csv(mini / "tables" / "table2.csv")
    assert len(table2) == 5
    ours = [column for column in table2.columns if column.startswith("Ours")]
    assert ours
    for column in ours:
        values = pd.to_numeric(table2[column], errors="raise")
        assert values.between(0, 100).all()
    table3 = pd.read_csv(mini / "tables" / "table3.csv")
    assert len(table3) == 4
    for suffix in ("md", "tex"):
        text = (mini / "tables" / f"table1.{suffix}").read_text()
        assert "pending" not in text and "nan" not in text.lower()


def test_mini_diffusion_model_generates_recognisable_digits(mini):
    quality = json.loads((mini / "digits" / "synthetic-quality" / "2k.json").read_text())
    assert quality["n_generated"] == 2000
    # a pixel classifier fitted on real digits gives most generated images their conditioning label
    assert quality["label_agreement"] > 0.7
    probe = pd.read_csv(mini / "digits" / "feature-validation" / "edm-digits" / "probe.csv")
    assert len(probe) >= 16


def test_mini_training_logs_show_the_dra_term(mini):
    log = pd.read_csv(mini / "digits/wrn-10-1/dm-at+dra/syn2k-bs128-ep30/train/log.csv")
    # L = L_AT + lambda * L_DRA with L_DRA = -cos in [-1, 1]; alignment improves during training
    assert (log["loss_dra"] < 0).all() and (log["loss_dra"] >= -1).all()
    assert log["loss_dra"].iloc[-1] < log["loss_dra"].iloc[0]
    plain = pd.read_csv(mini / "digits/wrn-10-1/dm-at/syn2k-bs128-ep30/train/log.csv")
    assert (plain["loss_dra"] == 0).all()


def test_report_builds_from_the_mini_run(mini):
    work = mini.parent.parent
    result = run_snakemake(work, "--report", "report.html", "--configfile", "config/mini.yaml", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = (work / "report.html").read_text(errors="replace")
    # the tables, a figure and a resolved recipe are registered in it
    for name in ("table2.csv", "figure5.png", "recipe.yaml"):
        assert name in html, name


def test_status_after_the_mini_run_shows_every_cell_done_with_its_numbers(mini, tmp_path):
    """`python -m scripts.status all` in the finished run: every planned cell done, with the clean and
    AutoAttack accuracy its autoattack.json holds and the hours its jobs took; nothing under results/ changes."""
    import csv
    import subprocess
    import sys

    work = mini.parent.parent
    before = {str(p): p.stat().st_mtime_ns for p in sorted((work / "results").rglob("*"))}
    result = subprocess.run([sys.executable, "-m", "scripts.status", "all", "--configfile", "config/mini.yaml",
                             "--out-csv", str(tmp_path / "status.csv"), "--out-md", str(tmp_path / "status.md")],
                            cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {str(p): p.stat().st_mtime_ns for p in sorted((work / "results").rglob("*"))} == before
    with open(tmp_path / "status.csv") as handle:
        rows = list(csv.DictReader(handle))
    from dra import config as cfg
    from dra.status import load_workflow_config

    config = load_workflow_config([work / "config" / "mini.yaml"], work)
    # the mini's table cells and its figure cells (the ST model, the lambda sweep), each once
    assert [row["cell"] for row in rows] == list(dict.fromkeys(c.id for c in cfg.table_cells(config)
                                                               + cfg.figure_cells(config)))
    for row in rows:
        assert row["status"] == "done", row
        assert float(row["hours"]) > 0  # training from its progress file, evaluation from benchmark files
        summary_path = mini / row["cell"] / "autoattack.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            assert float(row["clean"]) == summary["clean_accuracy"]
            assert float(row["autoattack"]) == summary["robust_accuracy"]
    print(result.stdout)


def test_mini_training_curves_read_back_equal_log_csv(mini):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = mini / "digits/wrn-10-1/dm-at+dra/syn2k-bs128-ep30/train"
    accumulator = EventAccumulator(str(train), size_guidance={"scalars": 0})
    accumulator.Reload()
    log = pd.read_csv(train / "log.csv")
    for column, tag in (("loss", "epoch/loss"), ("loss_dra", "epoch/loss_dra"), ("val_robust_acc", "val/robust_acc")):
        points = [(event.step, event.value) for event in accumulator.Scalars(tag)]
        expected = [(int(step), np.float32(value)) for step, value in zip(log["step"], log[column])
                    if not pd.isna(value)]
        assert points == expected, tag
    steps = [event.step for event in accumulator.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == log["step"].iloc[-1]


def test_mini_exports_load_as_their_cells_and_state_their_evaluation(mini):
    import numpy as np
    import torch
    from huggingface_hub import ModelCard

    from dra import load_model
    from dra.data.store import open_image_store

    exports = sorted(path.parent for path in mini.rglob("export/config.json"))
    # every runnable row of the mini tables: 5 WRN cells of table 2, the DRA-noisy row, the encoder row
    assert len(exports) == 7
    store = open_image_store(mini / "data" / "digits" / "test")
    images = torch.from_numpy(np.array(store.images[:32])).permute(0, 3, 1, 2).float() / 255
    for export in exports:
        cell = export.parent
        assert sorted(p.name for p in export.iterdir()) == ["LICENSE.md", "README.md", "config.json",
                                                            "model.safetensors"]  # digits: no RobustBench files
        with torch.no_grad():
            assert torch.equal(load_model(cell)(images), load_model(export)(images))
        evaluation = json.loads((cell / "autoattack.json").read_text())
        card = ModelCard.load(export / "README.md")
        values = sorted(result.metric_value for result in card.data.eval_results)
        assert values == sorted([evaluation["clean_accuracy"], evaluation["robust_accuracy"]])
        assert "scikit-learn" in (export / "LICENSE.md").read_text()
