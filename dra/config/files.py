"""Reading config files strictly: one message with the file, line and column for a YAML syntax
error, a repeated key or a top level that is no mapping; --config values typed as a file's are."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from dra.config.core import ConfigError


# libyaml's parser where PyYAML was built with it (its wheels are): the pure-Python one took 0.30 s
# for config/schema.yaml, config.yaml and config/mini.yaml, in every Snakemake process, libyaml 0.07 s
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SAFE_LOADER):
    """PyYAML keeps the last of two equal keys in a mapping; a config file must not hold any."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{key_node.start_mark.name}, line {line}: key '{key}' appears twice in one mapping "
                f"(first at line {seen[key]}); YAML would silently keep only the last value. Delete one of them."
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_config_file(path: str | Path) -> dict:
    """A config file as a mapping, or one ConfigError naming the file, the line and the column (YAML
    syntax), the repeated key (duplicates) or the top-level shape."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_StrictLoader)
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}. "
                          "Check the path given to --configfile.") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = error.problem or "unreadable"
        if error.context and error.context_mark:
            # the construct left open: "while parsing a flow sequence" started at line ...
            context = error.context_mark
            problem += f"; {error.context} started at line {context.line + 1}, column {context.column + 1}"
        raise ConfigError(
            f"{path}, {where}: not valid YAML ({problem}). Check the indentation (spaces only, no tabs), "
            "the brackets and the quoting there."
        ) from None
    if not isinstance(data, dict):
        shape = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(
            f"{path}, line 1, column 1: the file is {shape}; a config file is a mapping of keys "
            "(scale:, datasets:, ...) at its top level."
        )
    return data


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read each config file the run was given the strict way (Snakemake's own reading keeps the
    last of two equal keys and reports a syntax error without its file or line)."""
    for path in paths:
        load_config_file(path)


def typed_overrides(overrides: dict) -> dict:
    """``--config key={...}`` values as a config file would type them: Snakemake reads nested values
    with YAML's base loader, which keeps every scalar a string ('0.5', 'true')."""
    if isinstance(overrides, dict):
        return {key: typed_overrides(value) for key, value in overrides.items()}
    if isinstance(overrides, list):
        return [typed_overrides(value) for value in overrides]
    if isinstance(overrides, str):
        try:
            return yaml.safe_load(overrides) if overrides else overrides
        except yaml.YAMLError:
            return overrides
    return overrides
