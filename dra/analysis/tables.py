"""Tables 1-3: the paper's numbers, ours, and their difference, as CSV, Markdown and LaTeX.

A table is specified by a list of rows (from config):

- a cell row ``{cell: <dataset>/<arch>/<method>/<budget>, paper: {...} | null}`` (or the four
  keys separately) whose result is ``<results_root>/<cell>/<result file>``; ``label`` may give
  the display columns (default: Dataset, Model, Method, Synthetic, Batch, Epochs, read off the
  budget ``syn<set>-bs<batch>-ep<epochs>``);
- a reported row ``{reported: '<source paper>', paper: {...}}`` with any of dataset, arch,
  method, synthetic, batch, epochs for display: a baseline the paper quotes from other work and
  we do not rerun; it is shown with its source and "not run" in our columns;
- a result row ``{result: <folder relative to results_root>, label: {...}, paper: {...}}`` whose
  result file lies in that folder (the reference cells: ``reference/<name>``).

A cell row may list ``replicates`` (cell paths: the row's cell and its other seeds, written by the
workflow when a table runs several seeds): our columns then hold the mean over seeds, with
``sd <m>``, ``CI low <m>``, ``CI high <m>`` (95%, Student t) and ``seeds``. In an accuracy table, a
"+DRA" row (method ``<base>+dra...``) whose baseline row (method ``<base>``, same dataset, arch and
budget) is in the same table gets a paired comparison on the per-example AutoAttack flags
(``autoattack.npz``): ``Gain AA`` (percentage points, mean over seed pairs) with its bootstrap
interval, and McNemar's exact p-value (dra.analysis.significance).

``paper`` holds {clean, autoattack} for the accuracy tables (1, 2) and {cls95, cls99,
robust_dim} for the classification-dimension table (3). A cell whose result file does not
exist yet is shown as "pending", never as a number; a cell row with ``not_run: <what to do>``
(a cell the configuration cannot run yet, e.g. ImageNet without its folder) as "not run: <what to do>".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dra.analysis.significance import bootstrap_difference, mcnemar_exact, seed_summary
from dra.io import atomic_file, read_yaml
from dra.registry import TABLE_KINDS

PENDING = "pending"  # the cell has not been evaluated yet
NOT_RUN = "not run"  # a reported baseline (quoted, not reproduced), or a cell awaiting a config key
NO_PAPER_VALUE = "n/a"  # the paper gives no number for this row

CELL_KEYS = ("dataset", "arch", "method", "budget")
DISPLAY_LABELS = {"dataset": "Dataset", "arch": "Model", "method": "Method", "synthetic": "Synthetic",
                  "batch": "Batch", "epochs": "Epochs"}


class TableSpecError(ValueError):
    """A table row or a result file does not have the fields a table needs."""


# The kinds of table (dra.registry.TABLE_KINDS; a config table names its kind, tables.<t>.kind): what a
# cell row reads (result_files, relative to the cell's folder: the first holds the numbers, the table
# rule's inputs are all of them), the paper numbers a row carries (paper_keys), whether "+DRA" rows get
# the paired test on per-example flags (paired), and the metrics compared, registered as
# (paper key, result-file key, column name, is a percentage).
TABLE_KINDS.register("accuracy", result_files=("autoattack.json", "autoattack.npz"), paper_keys=("clean", "autoattack"),
                     paired=True)(
    [("clean", "clean_accuracy", "clean", True), ("autoattack", "robust_accuracy", "AA", True)])
TABLE_KINDS.register("classification_dimension", result_files=("classification_dimension.json",),
                     paper_keys=("cls95", "cls99", "robust_dim"), paired=False)(
    [("cls95", "cls95", "CLS-95", False), ("cls99", "cls99", "CLS-99", False),
     ("robust_dim", "robust_dim", "robust dim", False)])


def _kind(kind: str) -> dict[str, Any]:
    """A table kind's metrics, result file and whether it pairs rows."""
    if kind not in TABLE_KINDS:
        raise TableSpecError(f"table kind {kind!r} is not one of {TABLE_KINDS.names()}")
    meta = TABLE_KINDS.meta(kind)
    return {"metrics": TABLE_KINDS.get(kind), "result_file": meta["result_files"][0], "paired": meta["paired"]}


def _expand_cell(row: Any) -> Any:
    """A ``cell: d/a/m/b`` row as the four keys (config names a cell by its path)."""
    if isinstance(row, dict) and "cell" in row:
        row = dict(row)
        parts = str(row.pop("cell")).split("/")
        if len(parts) != len(CELL_KEYS):
            raise TableSpecError(f"cell {'/'.join(parts)!r} is not <dataset>/<arch>/<method>/<budget>")
        row.update(zip(CELL_KEYS, parts))
    return row


def cell_result_path(row: dict, results_root: str | Path, kind: str) -> Path:
    """Where a cell row's result lives (the workflow declares these as the table's inputs)."""
    if "result" in row:
        return Path(results_root) / str(row["result"]) / _kind(kind)["result_file"]
    row = _expand_cell(row)
    return Path(results_root).joinpath(*(str(row[key]) for key in CELL_KEYS)) / _kind(kind)["result_file"]


def _check_row(position: int, row: Any, metrics: list) -> None:
    if not isinstance(row, dict):
        raise TableSpecError(f"table row {position} is not a mapping: {row!r}")
    if "reported" in row:
        missing = [] if "paper" in row else ["paper"]
    elif "result" in row:
        missing = [] if "paper" in row else ["paper"]
    else:
        missing = [key for key in (*CELL_KEYS, "paper") if key not in row]
    if missing:
        raise TableSpecError(f"table row {position} ({row}) lacks {missing}")
    paper = row["paper"]
    if "reported" in row and paper is None:
        raise TableSpecError(f"table row {position}: a reported row needs its paper values")
    if paper is not None:
        absent = [paper_key for paper_key, *_ in metrics if paper_key not in paper]
        if absent:
            raise TableSpecError(f"table row {position}: paper values lack {absent}")


def _replicate_rows(row: dict) -> list[dict]:
    """The cell row once per seed (its ``replicates``), or the row itself."""
    return [_expand_cell({"cell": cell}) for cell in row["replicates"]] if "replicates" in row else [row]


def _read_flags(result_path: Path) -> np.ndarray | None:
    """The per-example AutoAttack correct-flags next to an autoattack.json, or None."""
    path = result_path.with_suffix(".npz")
    if not path.exists():
        return None
    with np.load(path) as flags:
        return np.column_stack([flags["indices"], flags["robust"]])


# "+DRA" methods and the method they add DRA to: at+dra -> at, dm-at+dra-lambda0.4 -> dm-at
DRA_METHOD = re.compile(r"^(?P<base>.+)\+dra(?:-.+)?$")


def _baseline_of(row: dict, rows: Sequence[dict]) -> int | None:
    """The position of a "+DRA" cell row's baseline row in the same table, or None."""
    match = DRA_METHOD.match(str(row.get("method", "")))
    if match is None or "reported" in row or "result" in row:
        return None
    for position, other in enumerate(rows):
        if ("reported" not in other and "result" not in other and other.get("method") == match["base"]
                and all(other.get(key) == row.get(key) for key in ("dataset", "arch", "budget"))):
            return position
    return None


def _paired(baseline: list[np.ndarray], treated: list[np.ndarray], where: str) -> dict:
    """Gain and p of the treated flags against the baseline's, seed pair by seed pair."""
    if len(baseline) != len(treated):
        raise TableSpecError(f"{where}: {len(treated)} seeds against {len(baseline)} of its baseline")
    for base, treat in zip(baseline, treated):
        if not np.array_equal(base[:, 0], treat[:, 0]):
            raise TableSpecError(f"{where}: evaluated on other test images than its baseline; rerun with one eval_n")
    base = np.stack([b[:, 1] for b in baseline]).astype(bool)
    treat = np.stack([t[:, 1] for t in treated]).astype(bool)
    gain = bootstrap_difference(base, treat)
    return {"Gain AA": gain["difference"], "Gain AA low": gain["low"], "Gain AA high": gain["high"],
            "p AA": mcnemar_exact(base, treat)["p"]}


def _read_result(path: Path, metrics: list) -> dict | None:
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TableSpecError(f"{path} is not valid JSON ({error}); rerun the step that writes it") from error
    missing = [key for _, key, *_ in metrics if key not in result] + ([] if "n" in result else ["n"])
    if missing:
        raise TableSpecError(f"{path} lacks {missing}; rerun the step that writes it")
    return result


def _budget_labels(budget: str) -> dict[str, Any]:
    # syn<set>-bs<batch>-ep<epochs> or nosyn-bs<batch>-ep<epochs>
    synthetic, batch, epochs = budget.split("-")
    return {"synthetic": synthetic.removeprefix("syn").upper() if synthetic != "nosyn" else "-",
            "batch": int(batch.removeprefix("bs")), "epochs": int(epochs.removeprefix("ep"))}


def _labels(row: dict) -> dict[str, Any]:
    if "label" in row:
        return dict(row["label"])
    if "result" in row:
        return {"Result": row["result"]}
    fields = dict(row) if "reported" in row else {**row, **_budget_labels(str(row["budget"]))}
    return {column: fields.get(key, "-") for key, column in DISPLAY_LABELS.items()}


def _difference(ours: float, paper: float, percentage: bool) -> float | int:
    return round(ours - paper, 2) if percentage else int(ours) - int(paper)


def build_table(rows: Sequence[dict], results_root: str | Path, kind: str) -> pd.DataFrame:
    """One row per spec row: display labels, Source, Paper <m>, Ours <m>, Diff <m> (ours - paper), n.

    Numbers stay numbers (float percentages, int dimensions); cells without a number hold the
    strings "pending", "not run" or "n/a".
    """
    metrics, paired = _kind(kind)["metrics"], _kind(kind)["paired"]
    rows = [_expand_cell(row) for row in rows]
    replicated = any(len(row.get("replicates", [])) > 1 for row in rows)
    records, flags = [], []
    for position, row in enumerate(rows):
        _check_row(position, row, metrics)
        record = _labels(row)
        paper = row["paper"]
        results, row_flags = [], None
        if "reported" in row:
            record["Source"] = f"reported: {row['reported']}"
            missing_ours = NOT_RUN
        elif "not_run" in row:
            record["Source"] = "reproduced"
            missing_ours = f"{NOT_RUN}: {row['not_run']}"
        else:
            record["Source"] = "reproduced"
            paths = [cell_result_path(replica, results_root, kind) for replica in _replicate_rows(row)]
            results = [_read_result(path, metrics) for path in paths]
            if paired:
                row_flags = [_read_flags(path) for path in paths]
            missing_ours = PENDING
        if not results or any(result is None for result in results):
            results, row_flags = [], None
        flags.append(row_flags if row_flags and all(f is not None for f in row_flags) else None)
        for paper_key, _, column, _ in metrics:
            missing = paper is None or paper[paper_key] is None
            record[f"Paper {column}"] = NO_PAPER_VALUE if missing else paper[paper_key]
        for paper_key, result_key, column, percentage in metrics:
            summary = seed_summary([result[result_key] for result in results]) if results else None
            if summary is None:
                ours = missing_ours
            elif len(results) == 1:
                ours = results[0][result_key]  # one seed: the number as written, an int stays an int
            else:
                ours = summary["mean"]
            record[f"Ours {column}"] = ours
            if summary is None:
                record[f"Diff {column}"] = missing_ours
            elif paper is None or paper[paper_key] is None:
                record[f"Diff {column}"] = NO_PAPER_VALUE
            else:
                record[f"Diff {column}"] = _difference(ours, paper[paper_key], percentage or len(results) > 1)
            if replicated:
                for key, name in (("sd", "sd"), ("ci_low", "CI low"), ("ci_high", "CI high")):
                    value = summary[key] if summary is not None else missing_ours
                    record[f"{name} {column}"] = "" if value is None else value
        if replicated:
            record["seeds"] = len(results) if results else missing_ours
        record["n"] = int(results[0]["n"]) if results else missing_ours
        records.append(record)
    if paired:
        for position, row in enumerate(rows):
            baseline = _baseline_of(row, rows)
            if baseline is not None and flags[position] is not None and flags[baseline] is not None:
                records[position].update(
                    _paired(flags[baseline], flags[position], f"table row {position} ({row['method']})"))
    frame = pd.DataFrame.from_records(records)
    numbers = _number_columns(metrics, replicated, "p AA" in frame.columns)
    label_columns = [c for c in frame.columns if c not in numbers]
    frame = frame[label_columns + numbers].astype(object)
    return frame.where(frame.notna(), "")  # a row without a paired test or a spread: empty


def _number_columns(metrics: list, replicated: bool = False, paired: bool = False) -> list[str]:
    columns = [f"Paper {c}" for *_, c, _ in metrics] + [f"Ours {c}" for *_, c, _ in metrics]
    if replicated:
        columns += [f"{name} {c}" for *_, c, _ in metrics for name in ("sd", "CI low", "CI high")]
    columns += [f"Diff {c}" for *_, c, _ in metrics]
    if paired:
        columns += ["Gain AA", "Gain AA low", "Gain AA high", "p AA"]
    return columns + (["seeds", "n"] if replicated else ["n"])


def _format(value: Any, column: str) -> str:
    if isinstance(value, str):
        return value
    if column in ("n", "seeds") or isinstance(value, (int, np.integer)):
        return f"{value:+d}" if column.startswith("Diff") else f"{value:d}"
    return f"{value:+.2f}" if column.startswith("Diff") else f"{value:.2f}"


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def format_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every entry as display text: percentages with 2 decimals, differences signed. Several seeds
    read ``mean ± sd`` with the 95% interval in its own column; a paired comparison reads
    ``+1.20 [-0.40, 2.80], p = 0.210`` (gain, bootstrap interval, McNemar)."""
    shown = {}
    for column in frame.columns:
        values = frame[column]
        if column.startswith(("sd ", "CI low ", "CI high ")) or column.startswith("Gain AA") or column == "p AA":
            continue
        text = [_format(v, column) for v in values]
        name = column.removeprefix("Ours ")
        if column.startswith("Ours ") and f"sd {name}" in frame.columns:
            text = [t if isinstance(sd, str) else f"{t} ± {sd:.2f}" for t, sd in zip(text, frame[f"sd {name}"])]
            shown[column] = text
            shown[f"95% CI {name}"] = [
                "" if isinstance(low, str) else f"[{low:.2f}, {high:.2f}]"
                for low, high in zip(frame[f"CI low {name}"], frame[f"CI high {name}"])]
            continue
        shown[column] = text
        if column == "Diff AA" and "p AA" in frame.columns:
            shown["DRA gain AA (95% CI), McNemar"] = [
                "" if isinstance(p, str) else f"{gain:+.2f} [{low:+.2f}, {high:+.2f}], {_format_p(p)}"
                for gain, low, high, p in zip(frame["Gain AA"], frame["Gain AA low"], frame["Gain AA high"],
                                              frame["p AA"])]
    return pd.DataFrame(shown)


def write_table(frame: pd.DataFrame, out_csv: str | Path, out_md: str | Path, out_tex: str | Path) -> None:
    """CSV keeps the numbers as numbers; Markdown and LaTeX show the formatted text."""
    shown = format_table(frame)
    with atomic_file(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_file(out_md) as tmp:
        tmp.write_text(shown.to_markdown(index=False) + "\n")
    with atomic_file(out_tex) as tmp:
        tmp.write_text(shown.to_latex(index=False, escape=True))


def load_table_rows(spec_path: str | Path, key: str | None = None) -> list[dict]:
    """The rows of a table from a YAML/JSON file: the whole file, or what lies at a dotted key
    inside it: a list of rows, or a table ``{title, rows}`` as config.yaml's ``tables.table1``."""
    spec = read_yaml(spec_path)
    for part in key.split(".") if key else []:
        if not isinstance(spec, dict) or part not in spec:
            raise TableSpecError(f"{spec_path} has no key {key!r} (missing {part!r})")
        spec = spec[part]
    if isinstance(spec, dict) and "rows" in spec:
        spec = spec["rows"]
    if not isinstance(spec, list) or not spec:
        raise TableSpecError(f"{spec_path}{' at ' + key if key else ''} is not a non-empty list of table rows")
    return spec


def build_and_write_table(spec_path: str | Path, key: str | None, results_root: str | Path, kind: str,
                          out_csv: str | Path, out_md: str | Path, out_tex: str | Path) -> pd.DataFrame:
    frame = build_table(load_table_rows(spec_path, key), results_root, kind)
    write_table(frame, out_csv, out_md, out_tex)
    return frame
