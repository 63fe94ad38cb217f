"""The statistics of the tables against known answers: Student-t intervals, McNemar's exact test
(scipy's exact binomial and a worked example), the bootstrap on a fixed seed, and the smallest
difference a paired test detects (exact power against Connor's normal approximation)."""

import math

import numpy as np
import pytest
from scipy import stats

from dra.analysis.significance import (bootstrap_difference, exact_mcnemar_power, mcnemar_exact,
                                       min_detectable_difference, normal_min_detectable_difference,
                                       seed_summary)


def test_seed_summary_is_mean_sd_and_student_t_interval():
    summary = seed_summary([78.0, 80.0, 82.0])
    # sd of (78, 80, 82) with n - 1 is 2; t(0.975, 2) = 4.302652729749464 (a t-table value)
    assert summary["mean"] == pytest.approx(80.0) and summary["sd"] == pytest.approx(2.0)
    half = 4.302652729749464 * 2.0 / math.sqrt(3)
    assert summary["ci_low"] == pytest.approx(80.0 - half) and summary["ci_high"] == pytest.approx(80.0 + half)
    assert summary["seeds"] == 3
    assert seed_summary([79.0]) == {"mean": 79.0, "sd": None, "ci_low": None, "ci_high": None, "seeds": 1}


def flags(both, baseline_only, treated_only, neither):
    """Correct-flags of two models on the same images with the given 2x2 counts."""
    base = [True] * both + [True] * baseline_only + [False] * treated_only + [False] * neither
    treat = [True] * both + [False] * baseline_only + [True] * treated_only + [False] * neither
    return np.array(base), np.array(treat)


def test_mcnemar_worked_example():
    # 1 image only the baseline gets right, 9 only the treated one: under H0 the 10 discordant
    # images are fair coin flips, p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    base, treat = flags(both=70, baseline_only=1, treated_only=9, neither=20)
    result = mcnemar_exact(base, treat)
    assert (result["baseline_only"], result["treated_only"]) == (1, 9)
    assert result["p"] == pytest.approx(22 / 1024, rel=1e-12)


@pytest.mark.parametrize("baseline_only, treated_only", [(30, 45), (12, 3), (50, 50), (0, 6)])
def test_mcnemar_is_scipys_exact_binomial_and_pools_seeds(baseline_only, treated_only):
    seeds = [flags(400, baseline_only + k, treated_only, 100 - k) for k in range(3)]  # 0+1+2 more
    base, treat = np.stack([b for b, _ in seeds]), np.stack([t for _, t in seeds])
    discordant = 3 * (baseline_only + treated_only) + 3
    expected = stats.binomtest(3 * treated_only, discordant, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(base, treat)["p"] == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(*flags(5, 0, 0, 5))["p"] == 1.0  # no discordant image: no evidence


def test_bootstrap_on_a_fixed_seed():
    rng = np.random.default_rng(7)
    base = rng.random((3, 2000)) < 0.75
    treat = rng.random((3, 2000)) < 0.78
    first, again = bootstrap_difference(base, treat, seed=3), bootstrap_difference(base, treat, seed=3)
    assert first == again  # a fixed seed gives the same interval
    per_image = (treat.astype(float) - base).mean(axis=0)
    assert first["difference"] == pytest.approx(100 * per_image.mean(), abs=1e-12)
    # 10,000 resamples of 2000 images: the percentile interval is the normal one to ~0.1 points
    half = 1.959964 * 100 * per_image.std(ddof=0) / math.sqrt(per_image.size)
    assert first["low"] == pytest.approx(first["difference"] - half, abs=0.12)
    assert first["high"] == pytest.approx(first["difference"] + half, abs=0.12)
    # every image flips to correct: no spread at all
    certain = bootstrap_difference(np.zeros((2, 50), bool), np.ones((2, 50), bool))
    assert certain == {"difference": 100.0, "low": 100.0, "high": 100.0}


def test_paired_flags_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        mcnemar_exact(np.ones(10, bool), np.ones(11, bool))


def test_min_detectable_difference_has_the_power_asked_for():
    n, rate = 10000, 0.08
    difference = min_detectable_difference(n, rate, alpha=0.05, power=0.8)
    assert exact_mcnemar_power(n, rate, difference, 0.05) >= 0.8
    assert exact_mcnemar_power(n, rate, difference - 1e-4, 0.05) < 0.8
    # 800 discordant images: the exact test agrees with Connor's normal approximation to 0.05 points
    normal = normal_min_detectable_difference(n, rate, alpha=0.05, power=0.8)
    assert difference == pytest.approx(normal, abs=5e-4)
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    assert n * normal**2 == pytest.approx((z_a * math.sqrt(rate) + z_b * math.sqrt(rate - normal**2)) ** 2)
    # the exact power at H0 is the test's size, at most alpha
    assert exact_mcnemar_power(n, rate, 0.0, 0.05) <= 0.05
