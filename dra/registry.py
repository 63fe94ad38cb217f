"""One registry per set of names: model families, objectives, optimizers, schedules, table kinds.

An implementation registers itself where it is written, the way timm registers its models:

    @MODEL_FAMILIES.register("wrn", required=("depth", "width"))
    def build_wide_resnet(arch, num_classes, mean, std): ...

and everything that needs the names reads the registry: dispatch (`MODEL_FAMILIES.get(name)`),
the configuration schema's enums and the config checks (dra.config), the recipe checks
(dra.training.recipe). Adding a family, an objective, an optimizer, a schedule or a table kind is
one file plus config.

The Snakemake process validates the configuration on every invocation and must not import torch
(or pandas) for it: the implementations are torch modules. So the names and their metadata (the
keyword arguments of `register`, literals only) are read from the source files with `ast`, without
running them; `get` imports the module that registers a name the first time it is asked for
(lazy, as timm's `create_model` finds an entrypoint). A name registered at run time
(`REGISTRY.register("x")(builder)` in a test or a notebook) counts too.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
_changes = 0  # run-time registrations so far: what is computed from the registries is cached by it


def generation() -> int:
    """A number that changes whenever a name is registered or dropped at run time."""
    return _changes


class RegistryError(ValueError):
    """An unknown name, or a registration the registry cannot read."""


@dataclass
class _Entry:
    module: str                       # the module that registers the name (imported by get)
    meta: dict[str, Any] = field(default_factory=dict)
    obj: Any = None
    loaded: bool = False


class Registry:
    """Names -> implementations and their metadata, declared by `register` in the modules under
    `packages` (folders of dra/, relative to the repository root).

    `key` is the configuration key the names appear under, so that an unknown name is reported
    where it is written (e.g. "arch.family").
    """

    def __init__(self, variable: str, kind: str, key: str, packages: tuple[str, ...]):
        self.variable = variable      # the name of this registry in dra.registry (what the sources call)
        self.kind = kind
        self.key = key
        self.packages = packages
        self._runtime: dict[str, _Entry] = {}
        self._static: dict[str, _Entry] | None = None

    # -- registration -----------------------------------------------------------------------

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        """Decorator: `@REGISTRY.register("name", key=literal, ...)` on a function or class, or
        `REGISTRY.register("name", ...)(obj)`. The metadata must be literals (read without importing)."""

        def decorator(obj: Any) -> Any:
            global _changes
            static = self._declared().get(name)
            entry = _Entry(getattr(obj, "__module__", "") or "", dict(meta), obj, True)
            if (static is not None and static.loaded and entry.module not in (static.module, "")
                    and static.obj is not obj):
                raise RegistryError(f"{self.kind} '{name}' is registered twice ({static.module} and {entry.module})")
            if static is not None:
                static.obj, static.loaded, static.meta = obj, True, dict(meta)
            else:
                self._runtime[name] = entry
                _changes += 1
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Drop a name registered at run time (tests clean up after themselves)."""
        global _changes
        if self._runtime.pop(name, None) is not None:
            _changes += 1

    # -- lookup ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every registered name, sorted: those the sources declare and those registered at run time."""
        return sorted({**self._declared(), **self._runtime})

    def meta(self, name: str) -> dict[str, Any]:
        """A name's metadata (register's keyword arguments), without importing its implementation."""
        return dict(self._entry(name).meta)

    def get(self, name: str) -> Any:
        """The implementation registered under `name` (its module is imported the first time)."""
        entry = self._entry(name)
        if not entry.loaded:
            importlib.import_module(entry.module)
            if not entry.loaded:
                raise RegistryError(f"{entry.module} declares {self.kind} '{name}' but registering it failed")
        return entry.obj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._runtime or name in self._declared())

    def unknown_message(self, name: Any) -> str:
        known = ", ".join(f"'{n}'" for n in self.names())
        return f"{self.key}: {name!r} is not a registered {self.kind} (known: {known})"

    def _entry(self, name: str) -> _Entry:
        if name in self._runtime:
            return self._runtime[name]
        declared = self._declared()
        if not isinstance(name, str) or name not in declared:
            raise RegistryError(self.unknown_message(name))
        return declared[name]

    # -- reading the sources ------------------------------------------------------------------

    def _declared(self) -> dict[str, _Entry]:
        if self._static is None:
            self._static = {}
            for package in self.packages:
                for path in sorted((ROOT / package).glob("*.py")):
                    for name, meta in _registrations(path, self.variable):
                        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                        if name in self._static:
                            raise RegistryError(f"{self.kind} '{name}' is registered twice "
                                                f"({self._static[name].module} and {module})")
                        self._static[name] = _Entry(module, meta)
        return self._static


def _registrations(path: Path, variable: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, metadata) of every `<variable>.register("name", **literals)` call in a source file."""
    text = path.read_text(encoding="utf-8")
    if f"{variable}.register(" not in text:
        return []
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == variable):
            continue
        try:
            name = ast.literal_eval(node.args[0])
            meta = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        except (IndexError, ValueError) as error:
            raise RegistryError(f"{path.relative_to(ROOT)}, line {node.lineno}: {variable}.register takes a literal "
                                f"name and literal keyword arguments (read without importing the module): "
                                f"{error}") from None
        found.append((name, meta))
    return found


# Model families: a builder (arch entry, num_classes, mean, std) -> nn.Module (dra.models.create_classifier).
# Metadata: keys (JSON schema of the arch keys this family takes: their one declaration, config/schema.yaml
# has only `family`), required (those of them it needs).
MODEL_FAMILIES = Registry("MODEL_FAMILIES", "model family", "arch.family", ("dra/models",))
# Training objectives: an object with adversarial_examples(...) and outer_loss(...) (dra.training.losses).
# Metadata: clean_branch (the outer loss reads a clean forward too: two graphs kept, dra.gpu_plan),
# required (recipe keys of `objective` it reads beyond label_smoothing).
OBJECTIVES = Registry("OBJECTIVES", "objective", "objective.name", ("dra/training",))
# Optimizers: a builder (optimizer config, model) -> torch.optim.Optimizer (dra.training.schedules).
# Metadata: required (optimizer keys it reads beyond name, lr and weight_decay).
OPTIMIZERS = Registry("OPTIMIZERS", "optimizer", "optimizer.name", ("dra/training",))
# Learning-rate schedules: a builder (schedule config, optimizer, max_lr, epochs, steps_per_epoch) -> Schedule.
SCHEDULES = Registry("SCHEDULES", "schedule", "schedule.name", ("dra/training",))
# Table kinds: what a table compares (dra.analysis.tables). Metadata: result_files (what each cell row
# reads, relative to the cell's folder: the table rule's inputs), paper_keys (a row's paper numbers).
TABLE_KINDS = Registry("TABLE_KINDS", "table kind", "tables.<table>.kind", ("dra/analysis",))

REGISTRIES = (MODEL_FAMILIES, OBJECTIVES, OPTIMIZERS, SCHEDULES, TABLE_KINDS)
