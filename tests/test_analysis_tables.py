"""dra.analysis.tables: paper vs ours vs difference, pending cells, reported rows.

Paper numbers are Table 1, 2 and 3 of the paper (arXiv:2602.19931)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from dra.analysis.tables import TableSpecError, build_table, cell_result_path, load_table_rows, write_table

TABLE1_ROWS = [
    {"dataset": "cifar10", "arch": "wrn-28-10", "method": "dm-at", "budget": "syn20m-bs2048-ep2400",
     "label": {"Dataset": "CIFAR-10", "Model": "WRN-28-10", "Method": "DM-AT"},
     "paper": {"clean": 92.44, "autoattack": 67.31}},
    {"dataset": "cifar10", "arch": "wrn-28-10", "method": "dm-at+dra", "budget": "syn20m-bs2048-ep2400",
     "label": {"Dataset": "CIFAR-10", "Model": "WRN-28-10", "Method": "DM-AT + DRA"},
     "paper": {"clean": 93.14, "autoattack": 67.83}},
    {"dataset": "cifar10", "arch": "wrn-28-10", "method": "dm-at+dra-noisy", "budget": "syn1m-bs512-ep400",
     "label": {"Dataset": "CIFAR-10", "Model": "WRN-28-10", "Method": "noisy target"},
     "paper": None},
]


def write_result(root: Path, row: dict, name: str, values: dict) -> None:
    cell = row.get("cell") or "/".join(row[key] for key in ("dataset", "arch", "method", "budget"))
    path = root / cell / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def test_accuracy_table_paper_ours_difference_and_pending(tmp_path):
    write_result(tmp_path, TABLE1_ROWS[0], "autoattack.json",
                 {"clean_accuracy": 92.5, "robust_accuracy": 66.75, "n": 10000})
    write_result(tmp_path, TABLE1_ROWS[2], "autoattack.json",
                 {"clean_accuracy": 90.0, "robust_accuracy": 60.0, "n": 1000})
    table = build_table(TABLE1_ROWS, tmp_path, "accuracy")

    assert list(table.columns) == ["Dataset", "Model", "Method", "Source", "Paper clean", "Paper AA",
                                   "Ours clean", "Ours AA", "Diff clean", "Diff AA", "n"]
    first = table.iloc[0]
    assert (first["Paper clean"], first["Paper AA"]) == (92.44, 67.31)
    assert (first["Ours clean"], first["Ours AA"]) == (92.5, 66.75)
    assert (first["Diff clean"], first["Diff AA"]) == (0.06, -0.56)  # ours - paper
    assert first["n"] == 10000 and first["Source"] == "reproduced"

    pending = table.iloc[1]  # no result file yet
    assert (pending["Paper clean"], pending["Paper AA"]) == (93.14, 67.83)
    assert [pending[c] for c in ("Ours clean", "Ours AA", "Diff clean", "Diff AA", "n")] == ["pending"] * 5

    no_paper = table.iloc[2]
    assert [no_paper[c] for c in ("Paper clean", "Paper AA", "Diff clean", "Diff AA")] == ["n/a"] * 4
    assert (no_paper["Ours clean"], no_paper["Ours AA"], no_paper["n"]) == (90.0, 60.0, 1000)


def test_reported_rows_are_shown_as_reported(tmp_path):
    rows = [
        {"reported": "Wu et al., 2024", "method": "AT+ADR", "arch": "WRN-34-10", "synthetic": "-",
         "batch": 128, "epochs": 200, "paper": {"clean": 86.11, "autoattack": 55.26}},
        {"cell": "cifar10/wrn-34-10/at+dra/nosyn-bs128-ep200", "paper": {"clean": 88.54, "autoattack": 57.29}},
    ]
    write_result(tmp_path, rows[1], "autoattack.json", {"clean_accuracy": 88.0, "robust_accuracy": 57.5, "n": 500})
    table = build_table(rows, tmp_path, "accuracy")
    reported, ours = table.iloc[0], table.iloc[1]
    assert reported["Source"] == "reported: Wu et al., 2024"
    assert (reported["Method"], reported["Model"], reported["Batch"], reported["Epochs"]) == \
        ("AT+ADR", "WRN-34-10", 128, 200)
    # a cell row's display columns are read off its path, budget included
    assert (ours["Dataset"], ours["Model"], ours["Method"], ours["Synthetic"], ours["Batch"], ours["Epochs"]) == \
        ("cifar10", "wrn-34-10", "at+dra", "-", 128, 200)
    assert (reported["Paper clean"], reported["Paper AA"]) == (86.11, 55.26)
    assert [reported[c] for c in ("Ours clean", "Ours AA", "Diff clean", "Diff AA", "n")] == ["not run"] * 5
    assert (ours["Diff clean"], ours["Diff AA"]) == (-0.54, 0.21)


def test_classification_dimension_table(tmp_path):
    # Table 3 of the paper: AT 9/14/9, DM-AT+DRA 12/15/23.
    rows = [
        {"dataset": "cifar10", "arch": "wrn-28-10", "method": "at", "budget": "nosyn-bs128-ep200",
         "label": {"Method": "AT"}, "paper": {"cls95": 9, "cls99": 14, "robust_dim": 9}},
        {"dataset": "cifar10", "arch": "wrn-28-10", "method": "dm-at+dra", "budget": "syn1m-bs512-ep400",
         "label": {"Method": "DM-AT+DRA"}, "paper": {"cls95": 12, "cls99": 15, "robust_dim": 23}},
    ]
    write_result(tmp_path, rows[0], "classification_dimension.json",
                 {"cls95": 11, "cls99": 13, "robust_dim": 9, "n": 2000})
    table = build_table(rows, tmp_path, "classification_dimension")
    first = table.iloc[0]
    assert [first[c] for c in ("Paper CLS-95", "Paper CLS-99", "Paper robust dim")] == [9, 14, 9]
    assert [first[c] for c in ("Ours CLS-95", "Ours CLS-99", "Ours robust dim")] == [11, 13, 9]
    assert [first[c] for c in ("Diff CLS-95", "Diff CLS-99", "Diff robust dim")] == [2, -1, 0]
    assert table.iloc[1]["Ours CLS-95"] == "pending"


def test_written_files_show_pending_not_nan(tmp_path):
    write_result(tmp_path, TABLE1_ROWS[0], "autoattack.json",
                 {"clean_accuracy": 92.5, "robust_accuracy": 66.75, "n": 10000})
    table = build_table(TABLE1_ROWS, tmp_path, "accuracy")
    out = tmp_path / "tables"
    write_table(table, out / "t.csv", out / "t.md", out / "t.tex")
    texts = {name: (out / name).read_text() for name in ("t.csv", "t.md", "t.tex")}
    for text in texts.values():
        assert "nan" not in text.lower() and "pending" in text
    assert "| +0.06 " in texts["t.md"] and "| -0.56 " in texts["t.md"] and "| 92.44 " in texts["t.md"]
    assert "DM-AT + DRA" in texts["t.tex"] and r"\begin{tabular}" in texts["t.tex"]
    reread = pd.read_csv(out / "t.csv")
    assert reread.loc[0, "Diff AA"] == "-0.56" and reread.loc[1, "Ours AA"] == "pending"


def test_bad_rows_and_results_name_the_problem(tmp_path):
    with pytest.raises(TableSpecError, match="row 0.*budget"):
        build_table([{"dataset": "c", "arch": "a", "method": "m", "paper": None}], tmp_path, "accuracy")
    with pytest.raises(TableSpecError, match="paper values lack \\['autoattack'\\]"):
        build_table([dict(TABLE1_ROWS[0], paper={"clean": 1.0})], tmp_path, "accuracy")
    with pytest.raises(TableSpecError, match="kind"):
        build_table(TABLE1_ROWS, tmp_path, "accuracies")
    write_result(tmp_path, TABLE1_ROWS[0], "autoattack.json", {"clean_accuracy": 92.5, "n": 10})
    with pytest.raises(TableSpecError, match="autoattack.json lacks \\['robust_accuracy'\\]"):
        build_table(TABLE1_ROWS, tmp_path, "accuracy")
    assert cell_result_path(TABLE1_ROWS[0], tmp_path, "accuracy") == \
        tmp_path / "cifar10/wrn-28-10/dm-at/syn20m-bs2048-ep2400/autoattack.json"


def test_build_table_script_reads_rows_at_a_key(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"tables": {"table1": TABLE1_ROWS}}))
    assert load_table_rows(tmp_path / "config.yaml", "tables.table1") == TABLE1_ROWS
    with pytest.raises(TableSpecError, match="table9"):
        load_table_rows(tmp_path / "config.yaml", "tables.table9")
    write_result(tmp_path / "results", TABLE1_ROWS[1], "autoattack.json",
                 {"clean_accuracy": 93.0, "robust_accuracy": 68.0, "n": 100})
    done = subprocess.run(
        [sys.executable, "scripts/build_table.py", "--spec", str(tmp_path / "config.yaml"), "--key", "tables.table1",
         "--kind", "accuracy", "--results-root", str(tmp_path / "results"), "--out-csv", str(tmp_path / "t1.csv"),
         "--out-md", str(tmp_path / "t1.md"), "--out-tex", str(tmp_path / "t1.tex")],
        capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "t1.csv")
    assert table.loc[1, "Diff clean"] == "-0.14" and table.loc[1, "Diff AA"] == "0.17"


def test_readme_table_snapshot_reads_config_tables_as_written(tmp_path):
    # README's snapshot command points --key at a table of config.yaml, {title, rows}, and every
    # cell is pending before any result exists (ImageNet rows included: no folder is read)
    root = Path(__file__).parents[1]
    config = yaml.safe_load((root / "config.yaml").read_text())
    rows = config["tables"]["table1"]["rows"]
    assert load_table_rows(root / "config.yaml", "tables.table1") == rows
    done = subprocess.run(
        [sys.executable, "-m", "scripts.build_table", "--spec", "config.yaml", "--key", "tables.table1",
         "--kind", "accuracy", "--results-root", str(tmp_path / "results" / "paper"),
         "--out-csv", str(tmp_path / "t1.csv"), "--out-md", str(tmp_path / "t1.md"),
         "--out-tex", str(tmp_path / "t1.tex")],
        capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "t1.csv")
    assert len(table) == len(rows)
    assert (table["Ours AA"] == "pending").sum() == sum("cell" in row for row in rows)


def write_evaluation(root: Path, cell: str, robust: np.ndarray, clean_accuracy: float) -> None:
    """autoattack.json and its per-example flags (autoattack.npz) as scripts.evaluate_autoattack writes them."""
    folder = root / cell
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "autoattack.npz", indices=np.arange(robust.size), clean=np.ones(robust.size, bool),
             robust=robust)
    (folder / "autoattack.json").write_text(json.dumps(
        {"clean_accuracy": clean_accuracy, "robust_accuracy": 100.0 * robust.mean(), "n": int(robust.size)}))


def paired_flags(baseline_only: int, treated_only: int, both: int = 60, neither: int = 30):
    base = np.array([True] * both + [True] * baseline_only + [False] * treated_only + [False] * neither)
    treat = np.array([True] * both + [False] * baseline_only + [True] * treated_only + [False] * neither)
    return base, treat


AT = "digits/wrn-10-1/at/nosyn-bs128-ep30"
AT_DRA = "digits/wrn-10-1/at+dra/nosyn-bs128-ep30"


def test_replicated_table_mean_spread_and_paired_test_on_flags(tmp_path):
    # three seeds; each seed pair on the same 100 images: (only AT right, only AT+DRA right) =
    # (2, 6), (3, 5), (1, 7); pooled 6 against 18 discordant images
    counts = [(2, 6), (3, 5), (1, 7)]
    seeds = [(AT, AT_DRA), (f"{AT}-seed2", f"{AT_DRA}-seed2"), (f"{AT}-seed3", f"{AT_DRA}-seed3")]
    for (base_cell, dra_cell), (baseline_only, treated_only) in zip(seeds, counts):
        base, treat = paired_flags(baseline_only, treated_only, neither=40 - baseline_only - treated_only)
        write_evaluation(tmp_path, base_cell, base, 99.0)
        write_evaluation(tmp_path, dra_cell, treat, 100.0)
    rows = [{"cell": AT, "paper": None, "replicates": [b for b, _ in seeds]},
            {"cell": AT_DRA, "paper": None, "replicates": [d for _, d in seeds]}]
    frame = build_table(rows, tmp_path, "accuracy").set_index("Method")
    # AT's robust accuracy per seed: 62, 63, 61; AT+DRA's: 66, 65, 67
    assert frame.loc["at", "Ours AA"] == pytest.approx(62.0) and frame.loc["at", "sd AA"] == pytest.approx(1.0)
    half = stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert frame.loc["at+dra", "CI low AA"] == pytest.approx(66.0 - half)
    assert frame.loc["at+dra", "CI high AA"] == pytest.approx(66.0 + half)
    assert frame.loc["at+dra", "seeds"] == 3 and frame.loc["at+dra", "n"] == 100
    assert frame.loc["at+dra", "Gain AA"] == pytest.approx(4.0)
    assert frame.loc["at+dra", "p AA"] == pytest.approx(stats.binomtest(18, 24, 0.5).pvalue)
    assert frame.loc["at+dra", "Gain AA low"] < 4.0 < frame.loc["at+dra", "Gain AA high"]
    assert frame.loc["at", "p AA"] == ""  # a baseline row is not tested against itself
    write_table(frame.reset_index(), tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    markdown = (tmp_path / "t.md").read_text()
    assert "62.00 ± 1.00" in markdown and "66.00 ± 1.00" in markdown
    assert f"p = {stats.binomtest(18, 24, 0.5).pvalue:.3f}" in markdown
    assert "± 1.00" in (tmp_path / "t.tex").read_text()


def test_one_seed_keeps_the_columns_and_adds_the_p_value(tmp_path):
    base, treat = paired_flags(1, 9)
    write_evaluation(tmp_path, AT, base, 99.0)
    write_evaluation(tmp_path, AT_DRA, treat, 100.0)
    frame = build_table([{"cell": AT, "paper": None}, {"cell": AT_DRA, "paper": None}], tmp_path, "accuracy")
    assert "sd AA" not in frame.columns and "seeds" not in frame.columns
    assert frame["Ours AA"].tolist() == [61.0, 69.0]
    assert frame["p AA"].tolist()[1] == pytest.approx(22 / 1024)  # McNemar's exact test, 1 against 9
    # without its baseline's flags, no test: the row is as before
    (tmp_path / AT / "autoattack.npz").unlink()
    assert "p AA" not in build_table([{"cell": AT, "paper": None}, {"cell": AT_DRA, "paper": None}],
                                     tmp_path, "accuracy").columns


def test_paired_rows_must_share_their_test_images(tmp_path):
    base, treat = paired_flags(1, 9)
    write_evaluation(tmp_path, AT, base, 99.0)
    write_evaluation(tmp_path, AT_DRA, treat, 100.0)
    np.savez(tmp_path / AT_DRA / "autoattack.npz", indices=np.arange(treat.size) + 1, clean=treat, robust=treat)
    with pytest.raises(TableSpecError, match="other test images"):
        build_table([{"cell": AT, "paper": None}, {"cell": AT_DRA, "paper": None}], tmp_path, "accuracy")
