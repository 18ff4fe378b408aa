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


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their places."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            result[i] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two lists; None where either is constant (no order to agree on)."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    da, db = [x - ma for x in ra], [y - mb for y in rb]
    norm = math.sqrt(sum(x * x for x in da) * sum(y * y for y in db))
    return sum(x * y for x, y in zip(da, db)) / norm if norm else None
