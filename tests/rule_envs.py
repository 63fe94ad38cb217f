"""Which third-party packages each rule's code imports, read statically from the sources.

A rule runs `python -m scripts.<name>` inside the conda env of its `conda:` directive (the slurm
profile deploys envs/*.yaml). Its code is the script plus every `dra`/`scripts` module that script
imports, transitively, with the packages' `__init__` files that Python runs on the way. Imports
inside functions count too: they run when the rule calls that function. pandas loads some
packages only when a method is called (`DataFrame.to_markdown` needs tabulate, `to_latex` jinja2),
so those method names count as imports of those packages.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("dra", "scripts")

# import name -> distribution name (conda-forge and PyPI spell these the same)
PACKAGE_OF_MODULE = {
    "numpy": "numpy",
    "yaml": "pyyaml",
    "jsonschema": "jsonschema",
    "tqdm": "tqdm",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "pandas": "pandas",
    "matplotlib": "matplotlib",
    "seaborn": "seaborn",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "pyautoattack": "pyautoattack",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "PIL": "pillow",
    "tabulate": "tabulate",
    "jinja2": "jinja2",
    "robustbench": "robustbench",
    "tensorboard": "tensorboard",
}

# pandas methods that import an optional package when called
LAZY_IMPORTS = {"to_markdown": "tabulate", "to_latex": "jinja2"}
# modules of a package that import another package, which the package itself does not require
SUBMODULE_IMPORTS = {"torch.utils.tensorboard": "tensorboard"}

# What a listed package installs along with it (its own declared requirements, on PyPI and
# conda-forge alike): an env may rely on these without naming them.
BRINGS_ALONG = {
    "pandas": {"numpy"},
    "scikit-learn": {"numpy", "scipy"},
    "matplotlib": {"numpy", "pillow"},
    "seaborn": {"numpy", "pandas", "matplotlib"},
    "torchvision": {"torch", "numpy", "pillow"},
    "timm": {"torch", "torchvision", "pyyaml", "huggingface_hub", "safetensors"},
    "pyautoattack": {"torch", "numpy"},
    # robustbench 1.1.1's declared requirements (its PyPI metadata)
    "robustbench": {"torch", "torchvision", "torchdiffeq", "geotorch", "requests", "numpy", "jinja2", "tqdm",
                    "pandas", "pyautoattack", "timm", "gdown", "pyyaml"},
}


def module_file(name: str) -> Path | None:
    """The source file of a first-party module (a package's __init__.py), or None."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports_of(tree: ast.AST, package: str) -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level names) imported anywhere in a parsed file."""
    first, third = set(), set()

    def add(name: str) -> None:
        top = name.split(".")[0]
        if top in FIRST_PARTY:
            first.add(name)
        elif top not in sys.stdlib_module_names and top != "__future__":
            third.add(top)
        third.update(needed for module, needed in SUBMODULE_IMPORTS.items()
                     if name == module or name.startswith(module + "."))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            add(base)
            if base.split(".")[0] in FIRST_PARTY:
                # `from dra.io import write_yaml` names a function, `from dra import config` a module
                for alias in node.names:
                    if module_file(f"{base}.{alias.name}"):
                        first.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in LAZY_IMPORTS:
            third.add(LAZY_IMPORTS[node.attr])
    return first, third


def import_closure(modules: list[str], extra_code: str = "") -> tuple[set[str], set[str]]:
    """(first-party modules loaded, third-party top-level modules they import) for entry modules
    and optional code run in place (a `run:` block)."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(modules)
    if extra_code:
        first, outside = _imports_of(ast.parse(extra_code), "")
        todo += sorted(first)
        third |= outside
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix in seen or module_file(prefix) is None:
                continue
            seen.add(prefix)
            path = module_file(prefix)
            package = prefix if path.name == "__init__.py" else prefix.rsplit(".", 1)[0]
            first, outside = _imports_of(ast.parse(path.read_text()), package)
            todo += sorted(first - seen)
            third |= outside
    return seen, third


@dataclass
class Rule:
    name: str
    env: str | None  # the envs/<env>.yaml stem
    scripts: list[str]  # scripts.<name> modules its shell command runs
    run_code: str = ""  # the body of a run: block (runs inside Snakemake itself)
    text: str = field(default="", repr=False)


RULE_HEADER = re.compile(r"^(?:rule (\w+):|use rule (\w+) as (\w+) with:)$", re.MULTILINE)


def workflow_rules() -> dict[str, Rule]:
    """Every rule of rules/*.smk and the Snakefile, read from the (snakefmt-formatted) text."""
    rules: dict[str, Rule] = {}
    copies = []  # `use rule` statements, resolved once every rule is read (their base may be in a later file)
    for path in sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]:
        text = path.read_text()
        headers = list(RULE_HEADER.finditer(text))
        for header, following in zip(headers, headers[1:] + [None]):
            end = following.start() if following else len(text)
            # the rule ends where the next unindented line starts
            body = re.split(r"\n(?=\S)", text[header.end() : end])[0]
            env = re.search(r'conda:\n\s+"\.\./envs/(\w+)\.yaml"', body)
            scripts = re.findall(r"\bscripts\.(\w+)", body)
            run = re.search(r"\n    run:\n((?:        .*\n|\n)+)", body + "\n")
            run_code = "\n".join(line[8:] for line in run[1].splitlines()) if run else ""
            if header[1]:
                rules[header[1]] = Rule(header[1], env and env[1], scripts, run_code, body)
            else:
                copies.append((header[2], header[3], env and env[1], scripts, body))
    for base_name, name, env, scripts, body in copies:
        # `use rule X as Y with:` keeps X's env and command unless it overrides them
        base = rules[base_name]
        rules[name] = Rule(name, env or base.env, scripts or base.scripts, base.run_code, body)
    return rules


def env_packages(env: str) -> set[str]:
    """The distributions an env file names (conda and pip entries), python and pip left out."""
    spec = yaml.safe_load((ROOT / "envs" / f"{env}.yaml").read_text())
    entries = []
    for dependency in spec["dependencies"]:
        entries += dependency["pip"] if isinstance(dependency, dict) else [dependency]
    names = {re.split(r"[ =<>!]", entry.strip())[0].lower() for entry in entries}
    return names - {"python", "pip"}


def env_provides(env: str) -> set[str]:
    """The distributions present in an env: those it names and what they bring along."""
    provided = set(env_packages(env))
    while True:
        more = set().union(*(BRINGS_ALONG.get(name, set()) for name in provided)) - provided
        if not more:
            return provided
        provided |= more


def rule_needs(rule: Rule) -> set[str]:
    """The distributions a rule's code imports."""
    _, third = import_closure([f"scripts.{name}" for name in rule.scripts], rule.run_code)
    return {PACKAGE_OF_MODULE.get(module, module) for module in third}


def missing_by_rule() -> dict[str, set[str]]:
    """Rule -> distributions its code imports that its env lacks (rules with a conda env)."""
    missing = {}
    for rule in workflow_rules().values():
        if rule.env:
            missing[rule.name] = rule_needs(rule) - env_provides(rule.env)
    return missing


if __name__ == "__main__":
    # python tests/rule_envs.py: the rules whose env lacks a module their code imports
    result = missing_by_rule()
    for name, packages in sorted(result.items()):
        if packages:
            print(f"{name}: {', '.join(sorted(packages))}")
    print(f"{sum(bool(p) for p in result.values())} of {len(result)} rules with a conda env lack a package")
