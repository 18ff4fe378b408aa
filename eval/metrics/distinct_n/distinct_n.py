"""Distinct-n (Li et al. 2016): unique n-grams over all n-grams of a set of replies, for n = 1..max_n."""

import datasets
import evaluate

_DESCRIPTION = "Share of distinct n-grams among all n-grams of the predictions (whitespace tokens, lower-cased)."
_KWARGS = """
Args:
    predictions (list of str): replies.
    max_n (int): largest n reported, default 2.
Returns:
    distinct_1 ... distinct_{max_n} (float in [0, 1]; 0 when there are no n-grams).
"""


def ngrams(words, n):
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Li et al., A Diversity-Promoting Objective Function for Neural Conversation Models, 2016",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, max_n=2):
        result = {}
        for n in range(1, max_n + 1):
            grams = [g for text in predictions for g in ngrams(text.lower().split(), n)]
            result[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
        return result
