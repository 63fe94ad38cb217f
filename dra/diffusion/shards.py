"""Resumable long jobs: finished chunks of rows kept in a state folder next to the output.

Sampling millions of images or extracting their features takes hours; a killed run must
not start over. A job splits its rows [0, n) into fixed shards, saves each finished shard
atomically as ``shard_<k>.npz`` in its state folder, and on restart computes only the
shards that are not there. ``job.json`` fingerprints the settings, so a state folder left by
different settings is refused rather than silently mixed in.

``run_sharded_job`` is the one loop every long job of dra.diffusion runs (EDM features, EDM
sampling, LightningDiT sampling, LightningDiT features): compute the pending shards, then
write the output from all shards, then remove the state folder.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from dra import preemption
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


def default_state_dir(out_path: str | Path) -> Path:
    """``<out_path>.state``: beside the output, so that a rerun of the same rule finds it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".state")


def row_batches(start: int, stop: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(lo, hi) of consecutive batches of at most ``batch_size`` rows covering [start, stop)."""
    for lo in range(start, stop, batch_size):
        yield lo, min(stop, lo + batch_size)


#: compute(start, stop, advance) -> the arrays of rows [start, stop); advance(k) reports k rows done
ShardCompute = Callable[[int, int, Callable[[int], Any]], dict[str, np.ndarray]]


def run_sharded_job(out_path: str | Path, n: int, shard_size: int, fingerprint: dict[str, Any],
                    compute: ShardCompute, write_output: Callable[[Iterator[tuple[int, dict[str, np.ndarray]]]], Any],
                    desc: str, state_dir: str | Path | None = None) -> None:
    """Compute the shards not yet in the state folder, then write the output from all of them.

    ``write_output`` receives the (start row, arrays) of every shard in order and writes the
    output atomically (an image or feature store writer); only after it returns is the state
    folder (default ``<out_path>.state``) removed, so a kill at any point loses at most the
    shard being computed. On SLURM's warning before the time limit (dra.preemption) it exits after
    the shard in progress, for Snakemake to retry.
    """
    job = ShardedJob(state_dir or default_state_dir(out_path), n, shard_size, fingerprint)
    pending = job.pending()
    done = n - sum(stop - start for start, stop in map(job.bounds, pending))
    progress = tqdm(total=n, initial=done, desc=desc, unit="img", file=sys.stderr)
    preemption.watch()
    for shard in pending:
        if preemption.requested():  # the time limit is near: the retry computes the shards left
            progress.close()
            saved = job.num_shards - len(job.pending())
            preemption.stop(f"{saved} of {job.num_shards} shards saved in {job.state_dir}")
        start, stop = job.bounds(shard)
        job.save(shard, **compute(start, stop, progress.update))
    progress.close()
    write_output(job.finished_shards())
    job.remove()
