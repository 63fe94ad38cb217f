"""A campaign you can watch: training's TensorBoard curves and progress file (dra.monitor), and
`python -m scripts.status` (dra.status) on empty, interrupted, failed and finished results."""

import copy
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_training_loop import stores, tiny_recipe  # noqa: F401  (stores: the module's fixture of tiny image stores)

from dra import config as cfg
from dra.monitor import PROGRESS_FILE, read_progress
from dra.status import (
    EVAL_RULES,
    STALE_SECONDS,
    TRAIN_BENCHMARK,
    TRAIN_LOG,
    campaign_status,
    load_workflow_config,
    planned_cells,
    render_csv,
    render_markdown,
    render_terminal,
    train_state_dir,
)
from dra.training import train_cell

ROOT = Path(__file__).resolve().parents[1]
# a cell of the mini configuration, whose folders the tiny runs below stand in for
CELL = cfg.parse_cell("digits/wrn-10-1/at/nosyn-bs128-ep30")


class Interrupted(Exception):
    pass


def _event_scalars(folder):
    """{tag: [(step, value)]} as TensorBoard's own reader returns them (orphaned events purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def _read_log(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mini_config():
    return load_workflow_config([ROOT / "config" / "mini.yaml"], ROOT)


@pytest.fixture(scope="module")
def runs(stores, tmp_path_factory, mini_config):  # noqa: F811
    """A tiny recipe (3 epochs of 3 steps) trained three ways into the results folders of CELL:
    uninterrupted; interrupted after step 4 (epoch 2); that one resumed to the end."""
    recipe = tiny_recipe(stores, epochs=3)
    work = {}
    for name in ("uninterrupted", "interrupted", "resumed"):
        directory = tmp_path_factory.mktemp(name)
        out = directory / cfg.cell_dir(mini_config, CELL) / "train"
        state = directory / train_state_dir(mini_config, CELL)
        if name == "resumed":  # continue the interrupted run's own files
            import shutil

            shutil.copytree(work["interrupted"], directory, dirs_exist_ok=True)

        def stop(step):
            if step == 4:
                raise Interrupted

        if name == "interrupted":
            with pytest.raises(Interrupted):
                train_cell(copy.deepcopy(recipe), out, state, threads=1, after_step=stop)
        else:
            train_cell(copy.deepcopy(recipe), out, state, threads=1)
        work[name] = directory
    return work


def _train_dir(directory, config):
    return directory / cfg.cell_dir(config, CELL) / "train"


def test_event_files_equal_log_csv_value_for_value(runs, mini_config):
    folder = _train_dir(runs["uninterrupted"], mini_config)
    scalars = _event_scalars(folder)
    log = _read_log(folder / "log.csv")
    assert [int(row["step"]) for row in log] == [3, 6, 9]
    for column, tag in (("loss", "epoch/loss"), ("loss_dra", "epoch/loss_dra"), ("lr", "epoch/lr"),
                        ("adv_batch_acc", "epoch/adv_batch_acc"), ("images_per_second", "epoch/images_per_second"),
                        ("val_clean_acc", "val/clean_acc"), ("val_robust_acc", "val/robust_acc")):
        # TensorBoard stores float32: each point is the log's value rounded to float32, at the epoch's last step
        assert scalars[tag] == [(int(row["step"]), np.float32(float(row[column]))) for row in log], tag
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 10))  # every step of a 9-step run
    # loss = loss_trades_or_ce + lambda * loss_dra at each step (lambda 1.2 in the tiny recipe)
    for (_, loss), (_, main), (_, dra) in zip(scalars["train/loss"], scalars["train/loss_trades_or_ce"],
                                              scalars["train/loss_dra"]):
        assert loss == pytest.approx(main + 1.2 * dra, rel=1e-5)


def test_log_csv_grows_each_epoch(runs, mini_config):
    # killed in epoch 2: epoch 1's row is in the state folder's log already, and the declared output
    # train/log.csv is not there (it appears whole at the end)
    state = runs["interrupted"] / train_state_dir(mini_config, CELL)
    assert [row["epoch"] for row in _read_log(state / "log.csv")] == ["1"]
    assert not (_train_dir(runs["interrupted"], mini_config) / "log.csv").exists()


def test_resumed_run_continues_the_curves_without_a_step_twice(runs, mini_config):
    resumed = _event_scalars(_train_dir(runs["resumed"], mini_config))
    reference = _event_scalars(_train_dir(runs["uninterrupted"], mini_config))
    assert resumed.keys() == reference.keys()
    for tag, points in resumed.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), tag
        # the resumed run replays steps 5-9 from its state: bit-identical on the CPU, so equal curves
        assert [step for step, _ in reference[tag]] == steps, tag
        if not tag.startswith(("epoch/seconds", "epoch/images_per_second", "train/images_per_second")):
            assert points == reference[tag], tag
    progress = read_progress(runs["resumed"] / train_state_dir(mini_config, CELL) / PROGRESS_FILE)
    assert progress["attempt"] == 2 and progress["phase"] == "finished" and progress["step"] == 9


def test_a_killed_run_shows_as_interrupted_at_its_epoch_and_step_with_a_finite_eta(runs, mini_config):
    directory = runs["interrupted"]
    progress = read_progress(directory / train_state_dir(mini_config, CELL) / PROGRESS_FILE)
    assert (progress["epoch"], progress["step"], progress["checkpoint_step"]) == (2, 4, 4)

    def row(now):
        status = campaign_status(mini_config, directory, "table2", now=now)
        return next(r for r in status.rows if r.cell == CELL.id)

    # just after its last update, its process (this one) alive: training
    live = row(progress["updated"] + 1)
    assert live.status == "training" and (live.epoch, live.epochs, live.step, live.steps) == (2, 3, 4, 9)
    # silent for longer than the threshold: interrupted, ETA = 5 steps left at the measured rate + 2 epoch ends
    stale = row(progress["updated"] + STALE_SECONDS + 1)
    assert stale.status == "interrupted" and (stale.epoch, stale.step, stale.steps) == (2, 4, 9)
    expected = 5 * progress["seconds_per_step"] + 2 * progress["epoch_end_seconds"]
    assert np.isfinite(stale.eta_hours) and stale.eta_hours * 3600 == pytest.approx(expected)
    assert progress["images_per_second"] > 0 and stale.images_per_second == progress["images_per_second"]
    assert "resumes from step 4" in stale.detail


def test_a_run_whose_process_is_gone_is_interrupted_at_once(runs, mini_config, tmp_path):
    import shutil

    shutil.copytree(runs["interrupted"], tmp_path, dirs_exist_ok=True)
    path = tmp_path / train_state_dir(mini_config, CELL) / PROGRESS_FILE
    progress = read_progress(path)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    path.write_text(json.dumps({**progress, "pid": finished.pid}))
    status = campaign_status(mini_config, tmp_path, "table2", now=progress["updated"] + 1)
    row = next(r for r in status.rows if r.cell == CELL.id)
    assert row.status == "interrupted" and "process on this host is gone" in row.detail


def test_status_on_empty_results_lists_every_paper_cell_as_not_started(tmp_path):
    config = load_workflow_config([], ROOT)
    status = campaign_status(config, tmp_path)  # all_tables
    assert [row.cell for row in status.rows] == [cell.id for cell in cfg.table_cells(config)]
    for row in status.rows:
        key = cfg.unset_source_key(config, cfg.parse_cell(row.cell).dataset)
        # ImageNet's cells wait for its folder, as the tables say; every other cell is not started
        assert (row.status, row.detail) == (("not run", f"set {key}") if key else ("not started", ""))
    runnable = cfg.runnable_cells(config, cfg.table_cells(config))
    assert sum(row.status == "not started" for row in status.rows) == len(runnable)
    # the paper's numbers of Table 1's first row (config.yaml)
    first = status.rows[0]
    assert (first.cell, first.paper_clean, first.paper_autoattack) == (
        "cifar10/wrn-28-10/dm-at/syn20m-bs2048-ep2400", 92.44, 67.31)
    assert status.tables[-1]["table"] == "total" and status.tables[-1]["gpu_hours"] == 0


def _write_finished_cell(directory, config, cell, clean, robust, train_seconds, eval_seconds):
    folder = directory / cfg.cell_dir(config, cell)
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "model.pt").write_bytes(b"weights")
    (folder / "autoattack.npz").write_bytes(b"flags")
    (folder / "classification_dimension.json").write_text("{}")
    (folder / "autoattack.json").write_text(json.dumps({"clean_accuracy": clean, "robust_accuracy": robust}))
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (folder / TRAIN_BENCHMARK).write_text(header + f"{train_seconds}\t0:00:00\t0\t0\t0\t0\t0\t0\t0\t0\n")
    row = f"{eval_seconds}\t0:00:00\t0\t0\t0\t0\t0\t0\t0\t0\n"
    (folder / EVAL_RULES["autoattack.json"][1]).write_text(header + row)


def test_a_finished_cell_is_done_with_its_numbers_and_gpu_hours(tmp_path):
    config = load_workflow_config([], ROOT)
    cell = cfg.parse_cell("cifar10/wrn-28-10/dm-at/syn1m-bs512-ep400")
    _write_finished_cell(tmp_path, config, cell, 91.5, 63.25, train_seconds=7200, eval_seconds=1800)
    status = campaign_status(config, tmp_path, "table2")
    row = next(r for r in status.rows if r.cell == cell.id)
    gpus = cfg.train_plan(config, cell).gpus
    assert (row.status, row.clean, row.autoattack, row.paper_clean, row.paper_autoattack) == (
        "done", 91.5, 63.25, 91.12, 63.35)
    # 2 h of training on the plan's GPUs, then half an hour of AutoAttack on resources.evaluate.gpu (1)
    assert row.gpu_hours == pytest.approx(2 * gpus + 0.5 * config["resources"]["evaluate"]["gpu"])
    table2 = next(t for t in status.tables if t["table"] == "table2")
    assert table2["done"] == 1 and table2["not started"] == 11 and table2["gpu_hours"] == pytest.approx(row.gpu_hours)
    assert "91.50 (91.12)" in render_terminal(status) and "| done |" in render_markdown(status)


def test_a_failed_job_shows_its_error_line_log_and_attempt(tmp_path, mini_config):
    """Snakemake's own log, from a real run: a train_cell job that fails twice (retries: 1)."""
    log = f"{cfg.cell_dir(mini_config, CELL)}/{TRAIN_LOG}"
    (tmp_path / "Snakefile").write_text(
        "rule train_cell:\n"
        f"    output: '{cfg.cell_dir(mini_config, CELL)}/train/model.pt'\n"
        f"    log: '{log}'\n"
        "    shell: \"python -c 'raise ValueError(\\\"the data is bad\\\")' 2>> {log}\"\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--retries", "1"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0 and "ValueError" in (tmp_path / log).read_text()
    status = campaign_status(mini_config, tmp_path, "table2")
    row = next(r for r in status.rows if r.cell == CELL.id)
    assert (row.status, row.attempt, row.log) == ("failed", 2, log)
    assert row.detail.endswith("ValueError: the data is bad")
    shown = render_terminal(status)
    assert "attempt 2;" in shown and f"(log: {log})" in shown


def _tree(directory):
    return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*"))}


def test_status_never_writes_under_results(runs, mini_config, tmp_path, monkeypatch):
    from scripts.status import main

    monkeypatch.chdir(ROOT)  # config.yaml's relative paths (the memory table) are the repository's
    for name in ("uninterrupted", "interrupted"):
        directory = runs[name]
        (directory / "config.yaml").symlink_to(ROOT / "config.yaml")
        before = _tree(directory / "results")
        main(["table2", "--configfile", str(ROOT / "config" / "mini.yaml"), "--directory", str(directory),
              "--out-md", str(tmp_path / f"{name}.md"), "--out-csv", str(tmp_path / f"{name}.csv")])
        assert _tree(directory / "results") == before
        rows = _read_log(tmp_path / f"{name}.csv")
        assert [row["cell"] for row in rows] == [cell.id for cell in cfg.table_cells(mini_config, ["table2"])]
        assert next(row for row in rows if row["cell"] == CELL.id)["status"] == (
            "evaluating" if name == "uninterrupted" else "training")


def test_status_knows_the_rules_files():
    # the paths dra.status reads are the ones the rules write (rules/train.smk, rules/evaluate.smk), through
    # rules/common.smk's cell_file and cell_state
    common = (ROOT / "rules" / "common.smk").read_text()
    train = (ROOT / "rules" / "train.smk").read_text()
    evaluate = (ROOT / "rules" / "evaluate.smk").read_text()
    assert 'CELL = "{dataset}/{arch}/{method}/{budget}"' in common
    assert 'return f"{RESULTS}/{CELL}/{name}"' in common and 'return f"{RESULTS}/state/{CELL}/{name}"' in common
    assert 'state=cell_state("train")' in train
    for name in (TRAIN_LOG, TRAIN_BENCHMARK):
        assert f'cell_file("{name}")' in train
    for log_name, benchmark in EVAL_RULES.values():
        assert f'cell_file("{log_name}")' in evaluate and f'cell_file("{benchmark}")' in evaluate


def test_targets_and_their_cells():
    config = load_workflow_config([ROOT / "config" / "mini.yaml"], ROOT)
    tables = planned_cells(config, "all_tables")
    assert [p.cell.id for p in tables] == [c.id for c in cfg.table_cells(config)]
    # a cell of Table 3 needs its classification dimension too; Table 2's only its AutoAttack
    table3_cell = next(p for p in tables if "table3" in p.tables)
    assert "classification_dimension.json" in table3_cell.needs
    assert planned_cells(config, "table2")[0].needs == ["autoattack.json", "autoattack.npz"]
    everything = planned_cells(config, "all")
    assert {p.cell.id for p in everything} == {c.id for c in cfg.table_cells(config) + cfg.figure_cells(config)}
    with pytest.raises(ValueError, match="target 'tabel2' is none of"):
        planned_cells(config, "tabel2")
    assert re.search(r"cell,tables,status", render_csv(campaign_status(config, Path("/nonexistent"))))


def test_planned_gpu_hours_follow_the_measured_seconds_per_image(tmp_path):
    from dra.status import planned_gpu_hours

    config = load_workflow_config([], ROOT)
    cell = cfg.parse_cell("cifar10/wrn-28-10/dm-at/syn1m-bs512-ep400")
    assert planned_gpu_hours(config, cell) is None  # the shipped table has no GPU measurement
    table = (ROOT / config["hardware"]["memory_per_image"]).read_text()
    assert ",42512858,," in table  # wrn-28-10's row, its GPU seconds per image empty
    (tmp_path / "memory.csv").write_text(table.replace(",42512858,,", ",42512858,0.001,"))
    config["hardware"]["memory_per_image"] = str(tmp_path / "memory.csv")
    gpus = cfg.train_plan(config, cell).gpus
    steps = 98 * 400  # ceil(50000 / 512) steps per epoch, 400 epochs
    # each GPU's share of the batch at 1 ms per image, times the GPUs (the plan rounds up to whole minutes)
    expected = steps * -(-512 // gpus) * 0.001 * gpus / 3600
    assert planned_gpu_hours(config, cell) == pytest.approx(expected, abs=gpus / 60)
