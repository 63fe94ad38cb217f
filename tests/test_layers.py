"""The layer rule of docs/architecture.md ("The picture"): imports never point upwards.

The layers are the doc's table (rows top to bottom, groups within a row); the imports are read from
every module's source with ast, nothing is imported. `python tests/test_layers.py [ROOT]` prints the
upward imports and private-name imports of ROOT/dra (default: this checkout) and their counts.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def layers_from_doc(text: str) -> list[list[set[str]]]:
    """The `| layer | groups |` table: one list of groups per row, top row first; a group is the set of
    backticked names of one entry, `dra.x.{a, b}` standing for dra.x.a and dra.x.b."""
    lines = text.splitlines()
    start = lines.index("| layer | groups |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        groups = []
        for name in re.findall(r"`([^`]+)`", line.split("|")[2]):
            stem, _, members = name.partition("{")
            if members:
                groups.append({stem + member.strip() for member in members.rstrip("}").split(",")})
            else:
                groups.append({name})
        rows.append(groups)
    return rows


def modules_of(package_dir: Path) -> dict[str, tuple[str, bool]]:
    """Dotted name -> (source, is a package's __init__) of every .py file under package_dir."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path.read_text(encoding="utf-8"), is_package)
    return modules


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for each import of a first-party module, relative
    imports resolved; `from a import b` is an import of a.b when a.b is a module in `known`."""
    top = module.split(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != top:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, "", node.lineno) if submodule in known else (base, alias.name, node.lineno))
    return found


def place(module: str, rows: list[list[set[str]]]) -> tuple[int, int] | None:
    """(row, group) of the longest table name that is the module or a package above it; the top package's
    name (`dra`, its __init__) stands for itself only."""
    best, best_length = None, -1
    for r, groups in enumerate(rows):
        for g, names in enumerate(groups):
            for name in names:
                covers = module == name or ("." in name and module.startswith(name + "."))
                if covers and len(name) > best_length:
                    best, best_length = (r, g), len(name)
    return best


def layer_violations(modules: dict[str, tuple[str, bool]], rows: list[list[set[str]]]) -> dict[str, list[str]]:
    """{"unplaced": modules no table name covers, "unknown": table names that are no module,
    "upward": imports of a higher row or of another group of the same row, "private": names with a
    leading underscore imported from another group}, each a sorted list of readable lines."""
    known = set(modules)
    named = {name for groups in rows for names in groups for name in names}
    out: dict[str, list[str]] = {"unplaced": sorted(m for m in known if place(m, rows) is None),
                                 "unknown": sorted(n for n in named if not any(m == n or m.startswith(n + ".")
                                                                               for m in known)),
                                 "upward": [], "private": []}
    for module, (source, is_package) in sorted(modules.items()):
        here = place(module, rows)
        if here is None:
            continue
        for target, name, line in imports_of(module, source, is_package, known):
            there = place(target, rows)
            if there is None or there == here:
                continue
            if there[0] <= here[0]:
                out["upward"].append(f"{module}:{line} imports {target} (layer {here[0] + 1} -> {there[0] + 1})")
            elif name.startswith("_"):
                out["private"].append(f"{module}:{line} imports the private {target}.{name}")
    # `from a import b, c` is one arrow
    return {kind: sorted(set(lines)) for kind, lines in out.items()}


ROWS = layers_from_doc(DOC.read_text(encoding="utf-8"))


def test_the_doc_table_covers_every_module_of_dra_and_names_only_modules():
    found = layer_violations(modules_of(ROOT / "dra"), ROWS)
    assert found["unplaced"] == [], "add these modules to the layer table of docs/architecture.md"
    assert found["unknown"] == [], "the layer table of docs/architecture.md names modules that do not exist"
    # the table's order, read back: training is above the diffusion jobs, which are above dra.models
    assert place("dra.training.loop", ROWS)[0] < place("dra.diffusion.probe", ROWS)[0] < place("dra.models", ROWS)[0]
    assert place("dra.models", ROWS)[0] < place("dra.diffusion.edm", ROWS)[0] < place("dra.attacks", ROWS)[0]


def test_no_module_of_dra_imports_upwards_or_a_private_name_of_another_group():
    found = layer_violations(modules_of(ROOT / "dra"), ROWS)
    assert found["upward"] == [], "imports against docs/architecture.md's layers:\n" + "\n".join(found["upward"])
    assert found["private"] == [], "\n".join(found["private"])


def _synthetic_package(tmp_path: Path, files: dict[str, str]) -> dict[str, tuple[str, bool]]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return modules_of(tmp_path / "dra")


# Each case adds one module text to a package laid out as the real one; the checker must name it.
@pytest.mark.parametrize("path, text, kind, expected", [
    # the arrows the issue found, written as they were before the code moved
    ("dra/diffusion/probe.py", "from dra.training.losses import objective_of\n", "upward",
     "dra.diffusion.probe:1 imports dra.training.losses"),
    ("dra/config.py", "def f():\n    from dra.diffusion.edm import EDMPrecond\n", "upward",
     "dra.config:2 imports dra.diffusion.edm"),
    ("dra/models/edm_encoder.py", "from dra.diffusion.checkpoint import _decode_infinities\n", "private",
     "dra.models.edm_encoder:1 imports the private dra.diffusion.checkpoint._decode_infinities"),
    # relative imports, `from package import module`, and a sideways import within a row
    ("dra/data/store.py", "from ..attacks import pgd_linf\n", "upward", "dra.data.store:1 imports dra.attacks"),
    ("dra/io.py", "from dra import config\n", "upward", "dra.io:1 imports dra.config"),
    ("dra/evaluation/autoattack.py", "import dra.training.loop\n", "upward",
     "dra.evaluation.autoattack:1 imports dra.training.loop (layer 3 -> 3)"),
])
def test_the_checker_names_an_upward_or_private_import(tmp_path, path, text, kind, expected):
    files = {name: "" for name in ("dra/training/__init__.py", "dra/training/losses.py", "dra/training/loop.py",
                                   "dra/evaluation/__init__.py", "dra/evaluation/autoattack.py",
                                   "dra/diffusion/__init__.py", "dra/diffusion/probe.py", "dra/diffusion/edm.py",
                                   "dra/diffusion/checkpoint.py", "dra/models/__init__.py",
                                   "dra/models/edm_encoder.py", "dra/attacks.py", "dra/data/__init__.py",
                                   "dra/data/store.py", "dra/config.py", "dra/io.py")}
    clean = layer_violations(_synthetic_package(tmp_path, files), ROWS)
    assert clean["upward"] == clean["private"] == []
    found = layer_violations(_synthetic_package(tmp_path, {**files, path: text}), ROWS)
    assert [line for line in found[kind] if line.startswith(expected)] == found[kind] != []


def test_downward_imports_and_imports_within_a_group_pass(tmp_path):
    modules = _synthetic_package(tmp_path, {
        "dra/training/loop.py": "from dra.attacks import pgd_linf\nfrom .losses import objective_of\n",
        "dra/training/losses.py": "from dra.training.loop import _private_helper\n",
        "dra/diffusion/probe.py": "from dra.diffusion.checkpoint import edm_from_json\nimport dra.data.store\n",
        "dra/diffusion/__init__.py": "", "dra/diffusion/checkpoint.py": "", "dra/training/__init__.py": "",
        "dra/attacks.py": "", "dra/data/__init__.py": "", "dra/data/store.py": "from dra.io import atomic_file\n",
        "dra/io.py": ""})
    found = layer_violations(modules, ROWS)
    assert found["upward"] == found["private"] == []


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    found = layer_violations(modules_of(root / "dra"), ROWS)
    for kind in ("unplaced", "upward", "private"):
        print(f"{kind}: {len(found[kind])}")
        for line in found[kind]:
            print("   ", line)
