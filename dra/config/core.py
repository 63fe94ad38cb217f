"""What every section of the configuration uses: a cell's name, the error a mistake raises and the
line that says where to fix it."""

from __future__ import annotations

import re
from dataclasses import dataclass


BUDGET_PATTERN = re.compile(
    r"^(?:syn(?P<synthetic>[0-9a-z]+)|nosyn)-bs(?P<batch>[0-9]+)-ep(?P<epochs>[0-9]+)(?:-seed(?P<seed>[0-9]+))?$"
)
HOW_TO_FIX = ("Fix it in config.yaml, in the overlay given with --configfile or in --config "
              "(keys: config/schema.yaml).")


class ConfigError(ValueError):
    """A configuration mistake, with the key that is wrong and what to do."""


@dataclass(frozen=True)
class Cell:
    dataset: str
    arch: str
    method: str
    budget: str

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.arch}/{self.method}/{self.budget}"

    @property
    def synthetic(self) -> str | None:
        return BUDGET_PATTERN.match(self.budget)["synthetic"]

    @property
    def batch_size(self) -> int:
        return int(BUDGET_PATTERN.match(self.budget)["batch"])

    @property
    def epochs(self) -> int:
        return int(BUDGET_PATTERN.match(self.budget)["epochs"])

    @property
    def seed(self) -> int | None:
        """The training seed of a replicate; None for the plain budget (config's seed)."""
        seed = BUDGET_PATTERN.match(self.budget)["seed"]
        return None if seed is None else int(seed)


def parse_cell(cell_id: str) -> Cell:
    parts = cell_id.strip("/").split("/")
    if len(parts) != 4 or not BUDGET_PATTERN.match(parts[3]):
        raise ConfigError(
            f"cell '{cell_id}' is not <dataset>/<arch>/<method>/<budget> with budget like "
            f"syn1m-bs512-ep400 or nosyn-bs128-ep200. {HOW_TO_FIX}"
        )
    return Cell(*parts)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key {key}: {message}. {HOW_TO_FIX}")
