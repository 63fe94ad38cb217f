"""DM-AT's real + synthetic batch sampler, deterministic per (seed, epoch).

Behaviour of DM-AT's SemiSupervisedSampler (core/data/semisup.py): a batch of ``batch_size`` holds
``int(batch_size * unsup_fraction)`` synthetic images drawn uniformly with replacement and
real images taken in order from a fresh permutation of the real set; when a permutation runs
out within an epoch a new one is drawn, and its last, shorter chunk is topped up with extra
synthetic images. An epoch is ``ceil(epoch_reference_size / batch_size)`` batches (DM-AT
uses 50000, the CIFAR train size before the validation split), not a pass over the real data.

Unlike DM-AT (global torch/numpy RNG state), every epoch is generated from its own numpy
Generator seeded by (seed, epoch), so a run resumed at any step gets the same batches.
"""

from __future__ import annotations

import math

import numpy as np


class DMATBatchSampler:
    def __init__(
        self,
        n_real: int,
        n_synthetic: int,
        batch_size: int,
        unsup_fraction: float,
        epoch_reference_size: int,
        seed: int,
    ):
        if n_real <= 0:
            raise ValueError(f"n_real must be positive, got {n_real}")
        if n_synthetic < 0:
            raise ValueError(f"n_synthetic must be >= 0, got {n_synthetic}")
        if batch_size <= 0 or epoch_reference_size <= 0:
            raise ValueError(
                f"batch_size and epoch_reference_size must be positive, got {batch_size}, {epoch_reference_size}"
            )
        if not 0.0 <= unsup_fraction < 1.0:
            raise ValueError(f"unsup_fraction must be in [0, 1), got {unsup_fraction}")
        self.n_real = n_real
        self.n_synthetic = n_synthetic
        self.batch_size = batch_size
        self.unsup_fraction = unsup_fraction
        self.epoch_reference_size = epoch_reference_size
        self.seed = seed
        # Without synthetic data every batch is real only (the AT rows).
        synthetic_per_batch = int(batch_size * unsup_fraction) if n_synthetic else 0
        self.real_per_batch = batch_size - synthetic_per_batch
        self.num_batches = math.ceil(epoch_reference_size / batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``num_batches`` (real_idx, synthetic_idx) int64 pairs of ``epoch``."""
        real_rng, synthetic_rng = (
            np.random.Generator(np.random.PCG64(child))
            for child in np.random.SeedSequence([self.seed, epoch]).spawn(2)
        )
        batches = []
        permutation, position = real_rng.permutation(self.n_real), 0
        for _ in range(self.num_batches):
            if position >= self.n_real:
                permutation, position = real_rng.permutation(self.n_real), 0
            real = permutation[position : position + self.real_per_batch]
            position += len(real)
            n_synthetic = self.batch_size - len(real) if self.n_synthetic else 0
            synthetic = synthetic_rng.integers(
                0, self.n_synthetic, size=n_synthetic, dtype=np.int64
            )
            batches.append((real.astype(np.int64), synthetic))
        return batches

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step`` of ``epoch``, identical to ``epoch(epoch)[step]`` (for resuming)."""
        if not 0 <= step < self.num_batches:
            raise IndexError(f"step {step} outside [0, {self.num_batches})")
        return self.epoch(epoch)[step]
