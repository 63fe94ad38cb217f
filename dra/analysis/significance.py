"""How sure a table's numbers are: spread over seeds, and paired tests of a "+DRA" row against its
baseline on the same test images.

- ``seed_summary``: mean, sample standard deviation and a 95% Student-t interval of a cell's
  accuracy over its training seeds.
- ``mcnemar_exact``: McNemar's exact test on per-example AutoAttack flags: of the images on which
  the two models disagree, the number the treated model gets right is Binomial(discordant, 1/2)
  when neither model is better (scipy.stats.binomtest, two-sided).
- ``bootstrap_difference``: a percentile bootstrap interval of the accuracy difference, resampling
  test images (the same images for every seed pair, so the pairing is kept), averaged over seeds.
- ``accuracy_interval``: a 95% exact (Clopper-Pearson) interval of one model's accuracy from its
  per-example flags (scipy.stats.binomtest(...).proportion_ci(method="exact")).
- ``min_detectable_difference``: the smallest accuracy difference the exact McNemar test detects
  with a given power on n paired images, for an assumed rate of discordant images.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def seed_summary(values: Sequence[float]) -> dict:
    """{mean, sd, ci_low, ci_high, seeds}; sd and the interval are None for one seed."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "sd": None, "ci_low": None, "ci_high": None, "seeds": len(values)}
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "seeds": len(values)}


def accuracy_interval(flags: np.ndarray, confidence: float = 0.95) -> dict:
    """{accuracy, low, high, n} in percent: the exact binomial interval of the fraction of True flags."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    if flags.size == 0:
        raise ValueError("no per-example flags: the interval needs at least one evaluated image")
    correct = int(flags.sum())
    interval = stats.binomtest(correct, flags.size).proportion_ci(confidence_level=confidence, method="exact")
    return {"accuracy": 100.0 * correct / flags.size, "low": 100.0 * float(interval.low),
            "high": 100.0 * float(interval.high), "n": int(flags.size)}


def _as_pairs(baseline: np.ndarray, treated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, images) boolean arrays; a 1-D flag vector is one seed."""
    baseline, treated = np.atleast_2d(np.asarray(baseline, bool)), np.atleast_2d(np.asarray(treated, bool))
    if baseline.shape != treated.shape:
        raise ValueError(f"paired flags differ in shape: baseline {baseline.shape}, treated {treated.shape}")
    return baseline, treated


def mcnemar_exact(baseline: np.ndarray, treated: np.ndarray) -> dict:
    """McNemar's exact test on correct-flags of two models on the same images (pooled over seeds
    when 2-D: each seed pair's discordant images counted together).

    Returns {baseline_only, treated_only, p}: images only the baseline gets right, images only the
    treated model gets right, and the two-sided exact p-value (1.0 without discordant images).
    """
    baseline, treated = _as_pairs(baseline, treated)
    baseline_only = int((baseline & ~treated).sum())
    treated_only = int((treated & ~baseline).sum())
    discordant = baseline_only + treated_only
    p = stats.binomtest(treated_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"baseline_only": baseline_only, "treated_only": treated_only, "p": float(p)}


def bootstrap_difference(baseline: np.ndarray, treated: np.ndarray, resamples: int = 10000, seed: int = 0,
                         chunk: int = 500) -> dict:
    """Treated minus baseline accuracy in percentage points, averaged over seed pairs, with a 95%
    percentile bootstrap interval over test images (one draw of images serves every seed pair)."""
    baseline, treated = _as_pairs(baseline, treated)
    per_image = (treated.astype(np.float64) - baseline.astype(np.float64)).mean(axis=0)  # mean over seeds
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, chunk):  # bounded memory for 10,000 images
        index = rng.integers(0, per_image.size, size=(min(chunk, resamples - start), per_image.size))
        draws.append(per_image[index].mean(axis=1))
    draws = 100.0 * np.concatenate(draws)
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"difference": 100.0 * float(per_image.mean()), "low": float(low), "high": float(high)}


def exact_mcnemar_power(n: int, discordant_rate: float, difference: float, alpha: float) -> float:
    """Power of the two-sided exact McNemar test on n paired images when a fraction
    ``discordant_rate`` of them is discordant and the treated model is better by ``difference``
    (a fraction, not percent). The discordant count is taken at its expectation, round(n * rate)."""
    discordant = round(n * discordant_rate)
    if discordant == 0:
        return 0.0
    # the symmetric rejection region of binomtest at p = 1/2: c <= k or c >= discordant - k
    k = int(stats.binom.ppf(alpha / 2, discordant, 0.5))
    while k >= 0 and 2 * stats.binom.cdf(k, discordant, 0.5) > alpha:
        k -= 1
    if k < 0:
        return 0.0
    q = 0.5 + difference / (2 * discordant_rate)  # P(treated is the right one | discordant)
    return float(stats.binom.cdf(k, discordant, q) + stats.binom.sf(discordant - k - 1, discordant, q))


def min_detectable_difference(n: int, discordant_rate: float, alpha: float = 0.05, power: float = 0.8,
                              step: float = 1e-4) -> float:
    """The smallest difference (a fraction) with at least ``power`` at level ``alpha``, on a grid of
    ``step``; the discordant images bound it: no difference exceeds their rate."""
    for index in range(1, int(round(discordant_rate / step)) + 1):
        difference = index * step
        if exact_mcnemar_power(n, discordant_rate, difference, alpha) >= power:
            return difference
    return math.nan


def normal_min_detectable_difference(n: int, discordant_rate: float, alpha: float = 0.05,
                                     power: float = 0.8) -> float:
    """Connor's (1987) normal approximation for McNemar's test, solved for the difference d:
    n d^2 = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - d^2))^2, by bisection on (0, psi)."""
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

    def gap(d: float) -> float:
        return math.sqrt(n) * d - (z_alpha * math.sqrt(discordant_rate) + z_power * math.sqrt(discordant_rate - d * d))

    low, high = 0.0, discordant_rate
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if gap(middle) < 0 else (low, middle)
    return high
