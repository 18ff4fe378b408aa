"""Standard errors of the evaluation's numbers: of a mean over independent items, and by bootstrap for a number
computed from a whole set at once (distinct-n, perplexity)."""

import math
import random
import statistics


def standard_error(values) -> float:
    values = list(values)
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def bootstrap_standard_error(items: list, statistic, resamples: int = 200, seed: int = 0) -> float:
    """The spread of `statistic(sample)` over `resamples` samples of the items drawn with replacement."""
    if len(items) < 2:
        return 0.0
    rng = random.Random(seed)
    return statistics.stdev(statistic(rng.choices(items, k=len(items))) for _ in range(resamples))
