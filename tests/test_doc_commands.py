"""Every command the documentation gives users runs as written: each `snakemake` command of
README.md, the Snakefile header and docs/*.md is dry-run with the configs it names, and README's
Python commands that run offline in seconds are run. Commands left out say why below."""

import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from dra import config as cfg
from doc_commands import documented_commands
from workflow_helpers import ROOT, copy_workflow, run_snakemake

COMMANDS = documented_commands()
PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())

# "one cell" commands name a cell by a template; a Table 1 cell that needs no ImageNet folder stands in
FIRST_CELL = cfg.runnable_cells(PAPER, cfg.table_cells(PAPER, ["table1"]))[0].id
PLACEHOLDERS = {"<dataset>/<arch>/<method>/<budget>": FIRST_CELL}

# snakemake commands that are not dry-run in the repository (any command starting so), and why
NOT_DRY_RUN = {
    "snakemake --report report.html": "reports a finished run (tests/test_workflow_mini.py makes one and reports it)",
}
# commands that change .snakemake/ run in a copy of the workflow
IN_A_COPY = {"snakemake --unlock"}

# README's Python commands that are not run here, and why; every other one is run as written
PYTHON_EXEMPT = {
    "python3 -m venv .venv": "creates the user's venv (installation)",
    "python -m pytest": "the test suite itself",
    "python benchmarks/mini_rule_times.py": "reads a finished mini run's benchmark files (15-20 min to make)",
    "python benchmarks/epoch_time_ratio.py --cell ... --baseline ...": "two trained cells, named by the user",
    "python benchmarks/gpu_train_step.py": "measures a CUDA GPU",
    "python benchmarks/gpu_check.py --out results/gpu_check/memory_per_image.csv":
        "measures a CUDA GPU (tests/test_gpu_check.py runs it end to end with --device cpu)",
    "PYTHONPATH=. python benchmarks/job_memory.py --write":
        "measures every GPU job's network on the CPU, LightningDiT-XL included (about 20 minutes on 2 cores)",
    "PYTHONPATH=. python benchmarks/autoattack_passes.py":
        "runs AutoAttack's whole budget on a linear model (a minute); its counts are quoted in README and gpu_hours.py",
    "python -m scripts.<step>": "the pattern of every rule's command, not a command",
    "python -m scripts.canary_table --cells results/canary/*/*/*/*/canary.json --out-csv results/canary/canary.csv "
    "--out-md results/canary/canary.md --memory-table config/data/memory_per_image.csv --measured <date>":
        "reads a finished canary run's cells (tests/test_canary.py runs canary cells and this table)",
}
# placeholders of README's Python commands and the values they run with (none at present)
PYTHON_VALUES: dict[str, str] = {}


def snakemake_commands():
    """Each snakemake command once (README repeats some of the Snakefile header's)."""
    unique = {}
    for command in COMMANDS:
        if command.program == "snakemake" and not command.text.startswith(tuple(NOT_DRY_RUN)):
            unique.setdefault(command.text, command)
    return list(unique.values())


def readme_python_commands():
    return [command for command in COMMANDS
            if command.source == "README.md" and command.program in ("python", "python3")]


def test_the_documented_commands_are_found():
    found = {(command.source, command.text) for command in COMMANDS}
    # one of each kind of place a command is written (a chain, a wrapped span, the Snakefile header)
    assert ("README.md", "snakemake all --cores 2 --configfile config/mini.yaml") in found
    assert ("README.md", "snakemake --profile slurm all --configfile config/short.yaml") in found
    assert ("Snakefile", "snakemake --profile slurm all_tables") in found
    assert any(text.startswith("python -m scripts.build_table --spec config.yaml") and text.endswith("--out-tex t1.tex")
               for source, text in found)
    assert len(snakemake_commands()) >= 7  # distinct ones; README repeats the Snakefile header


@pytest.mark.parametrize("command", snakemake_commands(), ids=lambda c: f"{c.source}: {c.text}")
def test_documented_snakemake_command_plans(command, tmp_path):
    text = command.text
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    assert "<" not in text, f"{command.source}: add the placeholder of '{command.text}' to PLACEHOLDERS"
    args = shlex.split(text)[1:]
    if "slurm" in args:
        # the profile deploys conda envs, which this machine lacks: only the deployment method changes
        args += ["--sdm", "env-modules"]
    if command.text in IN_A_COPY:
        result = run_snakemake(copy_workflow(tmp_path), *args, timeout=600)
    else:
        result = run_snakemake(ROOT, *args, "--dry-run", "--forceall", timeout=600)
    assert result.returncode == 0, f"{command.source}: {command.text}\n{result.stdout}\n{result.stderr}"
    if "--unlock" not in args:
        assert "Job stats:" in result.stdout


def test_every_exemption_names_a_command_the_documentation_gives():
    written = {command.text for command in COMMANDS}
    stale = {exempt for exempt in NOT_DRY_RUN if not any(text.startswith(exempt) for text in written)}
    stale |= set(PYTHON_EXEMPT) - written
    assert stale == set(), f"exemptions of commands the documentation no longer gives: {stale}"


@pytest.mark.slow  # about 20 s each: the FLOP count of every cell, 512 JPEGs through two loaders
@pytest.mark.parametrize("command", [c for c in readme_python_commands() if c.text not in PYTHON_EXEMPT],
                         ids=lambda c: c.text)
def test_readme_python_command_runs_as_written(command, tmp_path):
    text = command.text
    for placeholder, value in PYTHON_VALUES.items():
        text = text.replace(placeholder, value)
    words = shlex.split(text)
    env = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    argv = [sys.executable] + words[len(env) + 1:]
    # in a copy of the workflow: commands write their outputs (t1.csv ...) into the current folder
    work = copy_workflow(tmp_path)
    done = subprocess.run(argv, cwd=work, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command.text}\n{done.stdout}\n{done.stderr}"
    if "gpu_hours" in text:
        # README: "In all, on <gpu>: <low> to <high> GPU-hours", the script's total for that GPU type
        gpu = re.search(r"--gpu (\S+)", text)[1]
        quoted = re.search(rf"In all, on {gpu}: ([\d,]+) to ([\d,]+) GPU-hours", (ROOT / "README.md").read_text())
        assert quoted, f"README no longer quotes the total GPU-hours on {gpu}"
        low, high = (number.replace(",", "") for number in quoted.groups())
        assert f"total GPU-hours on {gpu}: {low} to {high}" in done.stdout
    if "build_table" in text:
        assert "pending" in (work / "t1.md").read_text()
