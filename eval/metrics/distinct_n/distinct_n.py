"""Distinct-n (Li et al. 2016): unique n-grams over all n-grams of a set of replies, for n = 1..max_n."""

import datasets
import evaluate

from minichatgpt.evaluation.stats import jackknife_standard_error

_DESCRIPTION = "Share of distinct n-grams among all n-grams of the predictions (whitespace tokens, lower-cased)."
_KWARGS = """
Args:
    predictions (list of str): replies.
    max_n (int): largest n reported, default 2.
    standard_error (bool): also return each one's jackknife standard error over the replies; default False.
Returns:
    distinct_1 ... distinct_{max_n} (float in [0, 1]; 0 when there are no n-grams).
    distinct_1_se ... (float, with standard_error), replies (int).
"""


def distinct(per_reply: list[list[tuple]]) -> float:
    grams = [g for reply in per_reply for g in reply]
    return len(set(grams)) / len(grams) if grams else 0.0


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

    def _compute(self, predictions, max_n=2, standard_error=False):
        result = {"replies": len(predictions)}
        for n in range(1, max_n + 1):
            per_reply = [ngrams(text.lower().split(), n) for text in predictions]
            result[f"distinct_{n}"] = distinct(per_reply)
            if standard_error:
                result[f"distinct_{n}_se"] = jackknife_standard_error(per_reply, distinct)
        return result
