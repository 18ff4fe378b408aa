"""Repeated n-gram rate: within each reply, the share of n-grams that already occurred earlier in that reply."""

import datasets
import evaluate

from minichatgpt.evaluation.stats import standard_error

_DESCRIPTION = "Mean over replies of (n-grams repeating an earlier n-gram of the same reply) / (n-grams of the reply)."
_KWARGS = """
Args:
    predictions (list of str): replies.
    n (int): n-gram size, default 3.
Returns:
    repeated_ngram_rate (float in [0, 1]), averaged over replies that have at least one n-gram; its standard error
    repeated_ngram_rate_se and that number of replies, replies.
"""


class RepeatedNgrams(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, n=3):
        rates = []
        for text in predictions:
            words = text.lower().split()
            grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
            if grams:
                rates.append(1 - len(set(grams)) / len(grams))
        return {"repeated_ngram_rate": sum(rates) / len(rates) if rates else 0.0,
                "repeated_ngram_rate_se": standard_error(rates), "replies": len(rates)}
