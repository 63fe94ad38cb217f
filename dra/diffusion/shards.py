"""Resumable long jobs: finished chunks of rows kept in a state folder next to the output.

Sampling millions of images or extracting their features takes hours; a killed run must
not start over. A job splits its rows [0, n) into fixed shards, saves each finished shard
atomically as ``shard_<k>.npz`` in its state folder, and on restart computes only the
shards that are not there. ``job.json`` fingerprints the settings, so a state folder left by
different settings is refused rather than silently mixed in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dra.io import atomic_file, write_json


class StaleStateError(RuntimeError):
    """A state folder holds shards made with other settings."""


class ShardedJob:
    def __init__(self, state_dir: str | Path, n: int, shard_size: int, fingerprint: dict[str, Any]):
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.state_dir = Path(state_dir)
        self.n = n
        self.shard_size = shard_size
        self.fingerprint = json.loads(json.dumps({**fingerprint, "n": n, "shard_size": shard_size}))
        job_file = self.state_dir / "job.json"
        if job_file.is_file():
            found = json.loads(job_file.read_text())
            if found != self.fingerprint:
                raise StaleStateError(f"{self.state_dir} holds shards of a run with other settings ({job_file}: "
                                      f"{found}, now {self.fingerprint}); delete that folder to start over")
        else:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json(job_file, self.fingerprint)

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_path(self, shard: int) -> Path:
        return self.state_dir / f"shard_{shard:06d}.npz"

    def bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min(self.n, (shard + 1) * self.shard_size)

    def pending(self) -> list[int]:
        return [k for k in range(self.num_shards) if not self.shard_path(k).is_file()]

    def save(self, shard: int, **arrays: np.ndarray) -> None:
        with atomic_file(self.shard_path(shard)) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

    def load(self, shard: int) -> dict[str, np.ndarray]:
        with np.load(self.shard_path(shard)) as data:
            return {key: data[key] for key in data.files}

    def finished_shards(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(start row, arrays) of every shard, in order; all shards must be done."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{self.state_dir}: shards {missing[:5]} are not computed yet")
        for shard in range(self.num_shards):
            yield self.bounds(shard)[0], self.load(shard)

    def remove(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
