"""Running the workflow from tests: a private copy of it, and Snakemake with this interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_COPIED = shutil.ignore_patterns(".venv", "results", ".snakemake", ".git", "__pycache__", "*.egg-info")


def copy_workflow(destination: Path) -> Path:
    """The checkout without results, caches and the venv, so a test's run leaves it alone."""
    destination.mkdir(parents=True, exist_ok=True)  # a file may come first: copy2 makes no folder
    for item in ROOT.iterdir():
        if NOT_COPIED(str(ROOT), [item.name]):
            continue
        if item.is_symlink():
            (destination / item.name).symlink_to(os.readlink(item))
        elif item.is_dir():
            shutil.copytree(item, destination / item.name, ignore=NOT_COPIED)
        else:
            shutil.copy2(item, destination / item.name)
    return destination


def run_snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 2400):
    # the venv's bin first, so that Snakemake and the rules' `python` are this interpreter's
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
