"""Where a campaign stands: one row per planned cell, read from the files the run leaves.

`campaign_status(config, directory, target)` reads, and never writes:

- the cell's outputs (``train/model.pt``, ``autoattack.json`` and the other files its tables read);
- the training's ``progress.json`` beside its resumable state (dra.monitor), never the
  state itself (gigabytes for the large cells);
- Snakemake's own logs, ``.snakemake/log/*.snakemake.log``: a job's start (with SLURM: its
  submission) and its errors, matched to the cell by the rule's ``log:`` file;
- the rules' ``log:`` files (the last error line) and ``benchmark:`` files (a finished job's seconds).

A cell is **done** (every file its tables read exists), **evaluating** (trained; AutoAttack or the
classification dimension still to come), **training** (its progress file was updated recently:
less than ``stale_seconds``, or three times the expected interval between updates where that is
longer, and on this host its process is still running), **interrupted** (a progress file or a state
that nothing updates any more: a killed job, waiting for Snakemake's retry or the next run),
**failed** (Snakemake logged an error for its job after the last progress update), **not started**,
or **not run: set <key>** (a cell whose data needs a config key first, as the tables show it).
Snakemake logs a SLURM job when it submits it; whether SLURM has started it is not in any file
here, so such a cell reads "not started" with the submission in its detail (``squeue --me`` knows).

GPU-hours spent are wall hours x GPUs of the cell's jobs: training from its progress file (all
attempts together, up to the last update) or else its benchmark file, evaluation from the benchmark
files (which Snakemake writes when a job succeeds). The jobs a cell shares with others (data,
diffusion sampling, features) are not counted. The plan comes from `planned_gpu_hours`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dra import config as cfg
from dra.monitor import PROGRESS_FILE, read_progress

# a training process that has not updated its progress file for this long is taken as gone
STALE_SECONDS = 15 * 60
STATES = ("done", "evaluating", "training", "interrupted", "failed", "not started", "not run")
TARGETS = ("all_tables", "all_evals", "all_models", "all")
# the rules' files of a cell, relative to its folder (rules/train.smk, rules/evaluate.smk)
TRAIN_LOG, TRAIN_BENCHMARK = "train/train.log", "train/train_cell.benchmark.tsv"
EVAL_RULES = {  # result file -> (rule's log, rule's benchmark)
    "autoattack.json": ("autoattack.log", "autoattack.benchmark.tsv"),
    "autoattack.npz": ("autoattack.log", "autoattack.benchmark.tsv"),
    "classification_dimension.json": ("classification_dimension.log", "classification_dimension.benchmark.tsv"),
}
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b|\b(error|ERROR|Killed|CANCELLED|OOM)\b")


class StatusError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- config


def load_workflow_config(configfiles: Iterable[str | Path] = (), directory: str | Path = ".") -> dict:
    """config.yaml of `directory` with the overlays on top, merged as Snakemake merges --configfile
    (snakemake.utils.update_config) and checked as the Snakefile checks it."""
    from snakemake.utils import update_config

    config = cfg.load_config_file(Path(directory) / "config.yaml")  # strict: a repeated key is named
    for path in configfiles:
        update_config(config, cfg.load_config_file(path))
    cfg.validate_config(config)
    return config


def train_state_dir(config: dict, cell: cfg.Cell) -> str:
    # rules/train.smk, rule train_cell, params.state
    return f"{cfg.results_dir(config)}/state/{cell.id}/train"


def planned_gpu_hours(config: dict, cell: cfg.Cell) -> float | None:
    """The planned GPU-hours of the cell's training, or None where the plan has no figure.

    Adapter to the GPU plan as it is (dra.gpu_plan): the time limit per attempt without its margin,
    times the cell's GPUs; None until a GPU canary has measured the architecture's GPU seconds per
    image. Swap this function when the plan gives GPU-hours per cell itself."""
    from dra.gpu_plan import RUNTIME_MARGIN

    plan = cfg.train_plan(config, cell)
    if plan.runtime_minutes is None or plan.gpus == 0:
        return None
    return plan.runtime_minutes / RUNTIME_MARGIN / 60 * plan.gpus


@dataclass
class PlannedCell:
    cell: cfg.Cell
    tables: list[str]
    needs: list[str]                       # files relative to the cell's folder
    paper: dict[str, float] | None = None  # {clean, autoattack} of an accuracy table's row
    waiting_for: str | None = None         # the config key to set first (ImageNet's folder)


def planned_cells(config: dict, target: str = "all_tables") -> list[PlannedCell]:
    """The cells a Snakemake target trains, in table order, with the files each must end with."""
    tables = list(config["tables"])
    if target not in TARGETS and target not in tables:
        raise StatusError(f"target '{target}' is none of {', '.join(TARGETS)} or a table of config "
                          f"tables ({', '.join(tables)})")
    if target in tables:
        tables = [target]
    planned: dict[str, PlannedCell] = {}
    for table in tables:
        needs = (["train/model.pt"] if target == "all_models" else
                 ["autoattack.json"] if target == "all_evals" else cfg.table_result_files(config, table))
        for row in config["tables"][table]["rows"]:
            if "cell" not in row:
                continue
            for seed in cfg.table_seeds(config, table):
                cell = cfg.replicate(config, cfg.parse_cell(row["cell"]), seed)
                entry = planned.setdefault(cell.id, PlannedCell(cell, [], [],
                                                                waiting_for=cfg.unset_source_key(config, cell.dataset)))
                entry.tables.append(table)
                entry.needs += [name for name in needs if name not in entry.needs]
                if entry.paper is None and row["paper"] and "autoattack" in row["paper"]:
                    entry.paper = row["paper"]
    if target == "all":  # the figures' cells (the ST model, the lambda sweep) need their model
        for cell in cfg.figure_cells(config):
            entry = planned.setdefault(cell.id, PlannedCell(cell, [], [],
                                                            waiting_for=cfg.unset_source_key(config, cell.dataset)))
            entry.tables.append("figures")
            entry.needs += [] if "train/model.pt" in entry.needs else ["train/model.pt"]
    return list(planned.values())


# ---------------------------------------------------------------------------------------------- Snakemake's logs


@dataclass
class JobEvent:
    kind: str          # "start" (a job started, or with SLURM submitted) or "error"
    rule: str
    time: float        # Unix time, from Snakemake's timestamp (whole seconds, local time)
    message: str = ""  # an error's "message:" field
    snakemake_log: str = ""


SNAKEMAKE_DATE = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
BLOCK_HEAD = re.compile(r"^(?:(?:local)?rule (?P<start>\w+)|Error in rule (?P<error>\w+)):$")


def snakemake_jobs(directory: str | Path = ".") -> dict[str, list[JobEvent]]:
    """Each rule log path (as the rule names it) -> the job starts and errors Snakemake logged for
    it, oldest first, over every run's log in .snakemake/log."""
    jobs: dict[str, list[JobEvent]] = {}
    for log in sorted((Path(directory) / ".snakemake" / "log").glob("*.snakemake.log")):
        lines = log.read_text(errors="replace").splitlines()
        stamp = None
        index = 0
        while index < len(lines):
            date = SNAKEMAKE_DATE.match(lines[index])
            head = BLOCK_HEAD.match(lines[index]) if stamp is not None else None
            index += 1
            if date:
                stamp = time.mktime(time.strptime(date[1], "%a %b %d %H:%M:%S %Y"))
                continue
            if not head:
                continue
            fields: dict[str, str] = {}
            while index < len(lines) and lines[index].startswith("    "):
                key, _, value = lines[index].strip().partition(": ")
                fields.setdefault(key, value)
                index += 1
            event = JobEvent("error" if head["error"] else "start", head["error"] or head["start"], stamp,
                             fields.get("message", ""), str(log))
            logs = fields.get("log", "").split(" (check log file(s)")[0]
            for path in filter(None, (part.strip() for part in logs.split(", "))):
                jobs.setdefault(path, []).append(event)
            stamp = None
    return jobs


def last_error_line(path: str | Path, tail_bytes: int = 256 * 1024) -> str | None:
    """The last line of a log that reads like an error (a Python exception, an OOM kill)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - tail_bytes))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(re.split(r"[\r\n]+", text)):
        if ERROR_LINE.search(line.strip()):
            return line.strip()
    return None


def benchmark_seconds(path: str | Path) -> float | None:
    """The wall seconds of a finished job (column s of Snakemake's benchmark file, summed over repeats)."""
    try:
        with open(path) as handle:
            return sum(float(row["s"]) for row in csv.DictReader(handle, delimiter="\t"))
    except (OSError, KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- one cell


@dataclass
class CellStatus:
    cell: str
    tables: str
    status: str
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    images_per_second: float | None = None
    eta_hours: float | None = None
    clean: float | None = None
    autoattack: float | None = None
    paper_clean: float | None = None
    paper_autoattack: float | None = None
    hours: float = 0.0
    gpu_hours: float = 0.0
    planned_gpu_hours: float | None = None
    attempt: int | None = None
    log: str | None = None
    detail: str = ""


def _process_alive(progress: dict) -> bool | None:
    """Whether the writing process still runs, where this host can tell (it ran here); else None."""
    if progress.get("host") != socket.gethostname() or not progress.get("pid"):
        return None
    try:
        os.kill(int(progress["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remaining_seconds(progress: dict) -> float | None:
    per_step = progress.get("seconds_per_step")
    if per_step is None:
        return None
    epochs_left = progress["epochs"] - progress["epochs_done"]
    return (progress["steps"] - progress["step"]) * per_step + epochs_left * (progress.get("epoch_end_seconds") or 0.0)


def _stale_after(progress: dict, stale_seconds: float) -> float:
    """How long a live run may go without updating its progress file: at least stale_seconds, or
    three times its expected interval (logged steps plus an epoch end) where that is longer."""
    interval = progress.get("log_every_steps", 1) * (progress.get("seconds_per_step") or 0.0)
    return max(stale_seconds, 3 * (interval + (progress.get("epoch_end_seconds") or 0.0)))


def _ago(seconds: float) -> str:
    return _duration(seconds) + " ago"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix))


def cell_status(config: dict, planned: PlannedCell, directory: Path, jobs: dict[str, list[JobEvent]],
                now: float, stale_seconds: float = STALE_SECONDS) -> CellStatus:
    cell = planned.cell
    folder = cfg.cell_dir(config, cell)
    row = CellStatus(cell.id, " ".join(planned.tables), "not started")
    if planned.paper:
        row.paper_clean, row.paper_autoattack = planned.paper["clean"], planned.paper["autoattack"]
    row.planned_gpu_hours = planned_gpu_hours(config, cell)
    if planned.waiting_for:
        row.status, row.detail = "not run", f"set {planned.waiting_for}"
        return row

    def path(name: str) -> Path:
        return directory / folder / name

    summary_file = path("autoattack.json")
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
            row.clean, row.autoattack = summary["clean_accuracy"], summary["robust_accuracy"]
        except (ValueError, KeyError):
            row.detail = f"{summary_file} unreadable"

    progress = read_progress(directory / train_state_dir(config, cell) / PROGRESS_FILE)
    gpus = cfg.train_plan(config, cell).gpus
    train_seconds = progress["run_seconds"] if progress else benchmark_seconds(path(TRAIN_BENCHMARK)) or 0.0
    eval_gpus = config["resources"]["evaluate"]["gpu"]
    eval_seconds = sum(benchmark_seconds(path(benchmark)) or 0.0
                       for benchmark in dict(EVAL_RULES.values()).values())
    row.hours = (train_seconds + eval_seconds) / 3600
    row.gpu_hours = (train_seconds * gpus + eval_seconds * eval_gpus) / 3600
    if progress:
        row.epoch, row.epochs, row.step, row.steps = (progress[k] for k in ("epoch", "epochs", "step", "steps"))
        row.images_per_second = progress.get("images_per_second")

    missing = [name for name in planned.needs if not path(name).is_file()]
    if not missing:
        row.status = "done"
        return row

    def failure(log_name: str) -> JobEvent | None:
        events = jobs.get(f"{folder}/{log_name}", [])
        row.attempt = sum(event.kind == "start" for event in events) or None
        errors = [event for event in events if event.kind == "error"]
        return errors[-1] if errors and errors[-1] is events[-1] else None

    def failed(error: JobEvent, log_name: str) -> CellStatus:
        row.status, row.log = "failed", f"{folder}/{log_name}"
        line = last_error_line(path(log_name))
        message = error.message if error.message not in ("", "None") else None
        row.detail = f"{_when(error.time)}: {line or message or 'no error line in the log'}"
        return row

    if path("train/model.pt").is_file():
        row.status = "evaluating"
        eval_logs = list(dict.fromkeys(EVAL_RULES[name][0] for name in missing if name in EVAL_RULES))
        for log_name in eval_logs:
            error = failure(log_name)
            if error:
                return failed(error, log_name)
        started = [event for name in eval_logs for event in jobs.get(f"{folder}/{name}", []) if event.kind == "start"]
        row.log = f"{folder}/{eval_logs[0]}" if eval_logs else None
        row.detail = (f"{', '.join(missing)} to come; job started (or submitted) {_when(started[-1].time)}"
                      if started else f"trained; {', '.join(missing)} not started yet")
        return row

    error = failure(TRAIN_LOG)
    state = directory / train_state_dir(config, cell) / "state.pt"
    if progress:
        remaining = _remaining_seconds(progress)
        age = now - progress["updated"]
        row.attempt = max(row.attempt or 0, progress.get("attempt", 1))
        if error and error.time + 1 > progress["updated"]:
            return failed(error, TRAIN_LOG)
        alive = _process_alive(progress)
        if alive is not False and age <= _stale_after(progress, stale_seconds):
            row.status = "training"
            row.eta_hours = None if remaining is None else max(remaining - age, 0.0) / 3600
            row.detail = f"updated {_ago(age)} on {progress.get('host')}"
        else:
            row.status = "interrupted"
            row.eta_hours = None if remaining is None else remaining / 3600  # once it runs again
            why = "its process on this host is gone" if alive is False else f"no update for {_duration(age)}"
            row.detail = (f"{why}; resumes from step {progress.get('checkpoint_step')} (its last state), "
                          f"ETA counted from a restart")
        row.log = f"{folder}/{TRAIN_LOG}"
        return row
    if state.is_file():  # a state written before progress files existed: its step is inside it
        if error and error.time + 1 > state.stat().st_mtime:
            return failed(error, TRAIN_LOG)
        row.status = "interrupted"
        row.detail = f"state.pt of {_when(state.stat().st_mtime)}, no progress file (step not read: the state is large)"
        return row
    if error:
        return failed(error, TRAIN_LOG)
    starts = [event for event in jobs.get(f"{folder}/{TRAIN_LOG}", []) if event.kind == "start"]
    if starts:
        row.detail = (f"Snakemake started (with SLURM: submitted) its job {_when(starts[-1].time)}; no progress "
                      "yet: queued or starting (squeue --me shows SLURM's queue)")
    return row


# ---------------------------------------------------------------------------------------------- the campaign


@dataclass
class CampaignStatus:
    results: str
    target: str
    when: float
    rows: list[CellStatus]
    tables: list[dict[str, Any]] = field(default_factory=list)
    stale_seconds: float = STALE_SECONDS


def campaign_status(config: dict, directory: str | Path = ".", target: str = "all_tables", now: float | None = None,
                    stale_seconds: float = STALE_SECONDS) -> CampaignStatus:
    directory = Path(directory)
    now = time.time() if now is None else now
    jobs = snakemake_jobs(directory)
    planned = planned_cells(config, target)
    rows = [cell_status(config, entry, directory, jobs, now, stale_seconds) for entry in planned]
    status = CampaignStatus(cfg.results_dir(config), target, now, rows, stale_seconds=stale_seconds)
    groups: dict[str, list[CellStatus]] = {}
    for row in rows:
        for table in row.tables.split():
            groups.setdefault(table, []).append(row)
    for name, members in [*groups.items(), ("total", rows)]:
        counts = {state: sum(row.status == state for row in members) for state in STATES}
        plans = [row.planned_gpu_hours for row in members if row.status != "not run"]
        status.tables.append({
            "table": name, "cells": len(members),
            **{state: count for state, count in counts.items() if count},
            "gpu_hours": sum(row.gpu_hours for row in members), "hours": sum(row.hours for row in members),
            "planned_gpu_hours": sum(plan for plan in plans if plan is not None),
            "cells_with_plan": sum(plan is not None for plan in plans),
            "cells_without_plan": sum(plan is None for plan in plans)})
    return status


# ---------------------------------------------------------------------------------------------- output



def _number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _with_paper(ours: float | None, paper: float | None) -> str:
    text = _number(ours, 2) if ours is not None else "-"
    return f"{text} ({paper:.2f})" if paper is not None else text


def display_rows(status: CampaignStatus) -> list[dict[str, str]]:
    shown = []
    for row in status.rows:
        progress = (f"ep {row.epoch}/{row.epochs} step {row.step}/{row.steps}"
                    if row.step is not None and row.status in ("training", "interrupted", "failed") else "")
        detail = row.detail
        if row.attempt and row.status in ("training", "interrupted", "failed"):
            detail = f"attempt {row.attempt}; {detail}"
        if row.status == "failed" and row.log:
            detail += f" (log: {row.log})"
        shown.append({"cell": row.cell, "status": row.status, "progress": progress,
                      "img/s": _number(row.images_per_second, 0) if progress else "",
                      "ETA": "" if row.eta_hours is None else _duration(row.eta_hours * 3600),
                      "clean (paper)": _with_paper(row.clean, row.paper_clean),
                      "AA (paper)": _with_paper(row.autoattack, row.paper_autoattack),
                      "hours": _number(row.hours, 2) if row.hours else "",
                      "GPU-h": _number(row.gpu_hours, 2) if row.hours else "",
                      "plan GPU-h": _number(row.planned_gpu_hours), "detail": detail})
    return shown


def display_tables(status: CampaignStatus) -> list[dict[str, str]]:
    shown = []
    for table in status.tables:
        counts = ", ".join(f"{table[state]} {state}" for state in STATES if table.get(state))
        plan, unplanned = _number(table["planned_gpu_hours"]), table["cells_without_plan"]
        if unplanned:
            plan = f"{plan} + {unplanned} cells unknown" if table["cells_with_plan"] else "unknown"
        shown.append({"table": table["table"], "cells": str(table["cells"]), "states": counts,
                      "hours": _number(table["hours"], 2), "GPU-h": _number(table["gpu_hours"], 2),
                      "plan GPU-h": plan})
    return shown


def notes(status: CampaignStatus) -> list[str]:
    return [
        (f"training: progress.json updated within {_duration(status.stale_seconds)} (or 3x its usual interval); "
        "interrupted: older than that, or its process on this host is gone; its ETA counts from a restart."),
        ("not started: Snakemake has logged no start of its job, or logged one (with SLURM: the submission) but no "
        "progress came yet; whether SLURM has started a job is not visible here (squeue --me)."),
        ("GPU-h: wall hours x GPUs of the cell's own jobs (training: progress.json over all attempts, else its "
        "benchmark file; evaluation: benchmark files, written when a job succeeds); shared jobs (data, synthetic "
        "images, features) are not counted. plan GPU-h: dra.gpu_plan's training time without its margin x GPUs, "
        "known once a GPU canary measured the GPU seconds per image."),
    ]


def _text_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no cells)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip(),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns).rstrip() for row in rows]
    return "\n".join(lines)


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no cells)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(row[c].replace("|", "\\|") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _heading(status: CampaignStatus) -> str:
    return f"{status.results}, target {status.target}, {len(status.rows)} cells, at {_when(status.when)}"


def render_terminal(status: CampaignStatus) -> str:
    return "\n".join([_heading(status), "", _text_table(display_rows(status)), "", _text_table(display_tables(status)),
                      "", *notes(status)]) + "\n"


def render_markdown(status: CampaignStatus) -> str:
    return "\n".join([f"# Status: {_heading(status)}", "", _markdown_table(display_rows(status)), "",
                      "## GPU-hours per table", "", _markdown_table(display_tables(status)), "",
                      *(f"- {note}" for note in notes(status))]) + "\n"


def render_csv(status: CampaignStatus) -> str:
    """One row per cell with raw numbers (hours, percentages as in autoattack.json)."""
    buffer = io.StringIO()
    fields = list(asdict(status.rows[0])) if status.rows else ["cell"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in status.rows:
        writer.writerow({key: "" if value is None else value for key, value in asdict(row).items()})
    return buffer.getvalue()
