"""Statistics of a results table: the paired comparison over held-out games that fits the design (every
arm plays the same games from the same seeds), Holm's correction, and the paper's Welch test over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev


def per_game_differences(method: Sequence[dict[str, float]], base: Sequence[dict[str, float]]) -> list[float]:
    """Per game, the method's score minus the baseline's, averaged over the seeds both have.

    ``method[i]`` and ``base[i]`` are seed i's scores per game id. Games missing from any seed of
    either side are left out, so every difference averages over the same seeds."""
    if len(method) != len(base) or not method:
        raise ValueError(f"paired comparison needs the same seeds on both sides ({len(method)} vs {len(base)})")
    games = set.intersection(*(set(d) for d in (*method, *base)))
    return [mean(m[g] - b[g] for m, b in zip(method, base, strict=True)) for g in sorted(games)]


def paired_t(diffs: Sequence[float]) -> float | None:
    """Two-sided one-sample t-test p-value of the mean difference against 0; None under two games or
    with no spread (every game the same difference)."""
    if len(diffs) < 2 or stdev(diffs) == 0:
        return None
    from scipy.stats import ttest_1samp

    p = float(ttest_1samp(diffs, 0.0).pvalue)
    return None if math.isnan(p) else p


def bootstrap_ci(diffs: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean difference, resampling games; seeded."""
    import numpy as np

    if not diffs:
        raise ValueError("no games to resample")
    data = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values of a family of hypotheses (None stays None and is not counted)."""
    known = sorted((p, name) for name, p in pvalues.items() if p is not None)
    out: dict[str, float | None] = {name: None for name, p in pvalues.items() if p is None}
    running = 0.0
    for rank, (p, name) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[name] = running
    return out


def welch_t(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value; None when either side has fewer than two values or no spread."""
    if len(a) < 2 or len(b) < 2 or (stdev(a) == 0 and stdev(b) == 0):
        return None
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference a two-sided paired t-test over ``n`` games with per-game SD ``sd``
    detects with ``power`` (normal approximation with the t quantile at n - 1 degrees of freedom)."""
    if n < 2:
        return None
    from scipy.stats import norm, t

    return (float(t.ppf(1 - alpha / 2, n - 1)) + float(norm.ppf(power))) * sd / math.sqrt(n)
