"""Time limits that fit the partition: what each attempt of a job asks SLURM for, and how many attempts.

Config `hardware.time_limit` names the partition's longest wall time (`sinfo -o "%P %l"`). A job's
estimate (a training cell: dra.gpu_plan's runtime from measured GPU seconds, else
`resources.train.runtime`; the other GPU jobs: `resources.<kind>.runtime`) may be longer. Such a
job runs as several attempts of at most the limit each: SLURM's warning signal stops each at a safe
point with its state saved (dra.preemption), and Snakemake's retry resumes from there.
"""

from __future__ import annotations

import math
import re

# attempts beyond those the estimate needs: for an estimate that proves low or a node that fails
# (the slurm profile's `retries: 2` gave every job as many before)
SPARE_ATTEMPTS = 2
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 24 * 60}


def minutes(text: str) -> int:
    """'90m' -> 90, '72h' -> 4320, '2d' -> 2880: the config's runtime format (config/schema.yaml)."""
    match = re.fullmatch(r"([0-9]+)([mhd])", text)
    if match is None:
        raise ValueError(f"runtime {text!r}: expected a whole number of m, h or d, like 90m, 24h or 2d")
    return int(match[1]) * _UNIT_MINUTES[match[2]]


def attempt_minutes(estimate: int, attempt: int, limit: int) -> int:
    """The time limit of attempt `attempt` (1, 2, ...): the estimate times the attempt, so that a
    retry after an estimate that was too low waits longer, but never more than the partition allows."""
    return min(estimate * attempt, limit)


def retries(estimate: int, limit: int) -> int:
    """Attempts after the first: those an estimate longer than the limit needs, plus SPARE_ATTEMPTS."""
    return math.ceil(estimate / limit) - 1 + SPARE_ATTEMPTS
