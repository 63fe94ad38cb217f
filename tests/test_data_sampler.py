"""DM-AT batch sampler (core/data/semisup.py): batch composition, coverage, determinism, resume."""

import numpy as np
import pytest

from dra.data.sampler import DMATBatchSampler

# DM-AT core/data/semisup.py: 48,976 real training images after the 1024 validation images are removed,
# epoch length fixed by the 50,000 CIFAR images, batch 512, unsup fraction 0.7.
N_REAL = 48_976


def test_dmat_batch_composition():
    sampler = DMATBatchSampler(N_REAL, 1_000_000, 512, 0.7, 50_000, seed=1)
    assert sampler.num_batches == len(sampler) == 98  # ceil(50000 / 512)
    batches = sampler.epoch(0)
    assert len(batches) == 98
    for real, synthetic in batches:
        assert (len(real), len(synthetic)) == (154, 358)  # int(512 * 0.7) = 358 synthetic
        assert real.dtype == synthetic.dtype == np.int64
        assert 0 <= real.min() and real.max() < N_REAL
        assert 0 <= synthetic.min() and synthetic.max() < 1_000_000
    real = np.concatenate([r for r, _ in batches])
    assert len(real) == len(np.unique(real)) == 98 * 154  # 15,092 distinct real images per epoch
    assert (
        DMATBatchSampler(N_REAL, 1_000_000, 1024, 0.7, 50_000, seed=1).real_per_batch == 1024 - 716
    )


def test_real_only_epoch_covers_every_index_once_then_restarts():
    sampler = DMATBatchSampler(N_REAL, 0, 512, 0.7, 50_000, seed=1)
    batches = sampler.epoch(2)
    sizes = [len(real) for real, _ in batches]
    assert all(len(synthetic) == 0 for _, synthetic in batches)
    # 48,976 = 95 * 512 + 336: one full permutation in 96 batches, then a fresh one
    assert sizes[:95] == [512] * 95 and sizes[95] == 336 and sizes[96:] == [512, 512]
    first_pass = np.concatenate([real for real, _ in batches[:96]])
    np.testing.assert_array_equal(np.sort(first_pass), np.arange(N_REAL))
    assert len(np.unique(np.concatenate([real for real, _ in batches[96:]]))) == 1024


def test_short_last_chunk_is_topped_up_with_synthetic():
    # 1000 real images, 30 real per batch: 33 full chunks then 10, as DM-AT's sampler does
    sampler = DMATBatchSampler(1000, 50, 100, 0.7, 5000, seed=3)
    batches = sampler.epoch(0)
    assert [len(r) for r, _ in batches[32:35]] == [30, 10, 30]
    assert [len(s) for _, s in batches[32:35]] == [70, 90, 70]
    assert all(len(r) + len(s) == 100 for r, s in batches)
    first_pass = np.concatenate([r for r, _ in batches[:34]])
    np.testing.assert_array_equal(np.sort(first_pass), np.arange(1000))
    # with replacement: 50 synthetic images, 3,520 draws -> every one drawn, many repeats
    synthetic = np.concatenate([s for _, s in batches])
    assert len(synthetic) == 50 * 70 + 20 and set(synthetic.tolist()) == set(range(50))


def test_synthetic_draws_are_uniform():
    sampler = DMATBatchSampler(N_REAL, 10, 512, 0.7, 50_000, seed=5)
    counts = np.bincount(np.concatenate([s for _, s in sampler.epoch(0)]), minlength=10)
    # 35,084 draws over 10 values: expected 3508.4 each, binomial sd ~56; allow 5 sd
    assert np.abs(counts - counts.sum() / 10).max() < 5 * np.sqrt(counts.sum() * 0.1 * 0.9)


def test_deterministic_per_seed_and_epoch_and_resumable():
    sampler = DMATBatchSampler(N_REAL, 1_000_000, 512, 0.7, 50_000, seed=1)
    again = DMATBatchSampler(N_REAL, 1_000_000, 512, 0.7, 50_000, seed=1)
    epoch3, epoch3_again = sampler.epoch(3), again.epoch(3)
    for (r1, s1), (r2, s2) in zip(epoch3, epoch3_again):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(s1, s2)
    # a fresh sampler (a resumed run) reproduces any step without replaying earlier epochs
    for step in (0, 41, 97):
        real, synthetic = again.batch(3, step)
        np.testing.assert_array_equal(real, epoch3[step][0])
        np.testing.assert_array_equal(synthetic, epoch3[step][1])
    assert not np.array_equal(sampler.epoch(4)[0][0], epoch3[0][0])
    other_seed = DMATBatchSampler(N_REAL, 1_000_000, 512, 0.7, 50_000, seed=2)
    assert not np.array_equal(other_seed.epoch(3)[0][0], epoch3[0][0])
    with pytest.raises(IndexError):
        again.batch(3, 98)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unsup_fraction"):
        DMATBatchSampler(10, 10, 8, 1.0, 10, seed=0)
    with pytest.raises(ValueError, match="n_real"):
        DMATBatchSampler(0, 10, 8, 0.5, 10, seed=0)
