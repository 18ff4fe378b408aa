"""Standard errors of the evaluation's numbers: of a mean over independent items, and by the jackknife for a number
computed from a whole set at once (distinct-n, pooled perplexity), where a bootstrap's repeated draws would bias
it (a resample with repeats has fewer distinct n-grams)."""

import math
import statistics


def standard_error(values) -> float:
    values = list(values)
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def jackknife_standard_error(items: list, statistic) -> float:
    """sqrt((n - 1) / n * sum of squared deviations of `statistic` on the n leave-one-out sets from their mean)."""
    n = len(items)
    if n < 2:
        return 0.0
    values = [statistic(items[:i] + items[i + 1 :]) for i in range(n)]
    mean = statistics.fmean(values)
    return math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in values))
