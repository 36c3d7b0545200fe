"""Statistics that studies share: the t-interval of a mean over replicates, and a hierarchical
bootstrap that resamples replicates, then test images (for BD-rates of per-image R-D curves see
:func:`lic_core.analysis.bdrate.paired_bootstrap`, which resamples images only)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """Mean of the finite values and its two-sided Student-t confidence interval."""

    mean: float
    std: float
    n: int
    low: float
    high: float


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean, sample std (ddof 1) and ``level`` t-interval over the finite values (NaN = a replicate
    whose value is undefined: left out and not counted in ``n``); fewer than 2 -> NaN bounds."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, math.nan, 1, math.nan, math.nan)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


def percentile_interval(draws: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws (NaN, NaN without draws)."""
    if len(draws) == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(np.asarray(draws, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def two_level_bootstrap(units: int, images: int, statistic: Callable[[np.ndarray, np.ndarray], float],
                        samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Percentile interval of ``statistic(unit_idx, image_idx)`` when the independent units (e.g.
    trunks) are resampled with replacement and, in every draw, the test images too (one image draw
    shared by every unit: the images are the same photos for all). NaN statistics are dropped and
    counted."""
    rng = np.random.default_rng(seed)
    draws, dropped = [], 0
    for _ in range(samples):
        v = statistic(rng.integers(0, units, units), rng.integers(0, images, images))
        if math.isfinite(v):
            draws.append(v)
        else:
            dropped += 1
    lo, hi = percentile_interval(draws, level)
    return {"low": lo, "high": hi, "samples": len(draws), "dropped": dropped}
