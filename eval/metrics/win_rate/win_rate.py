"""Pairwise win rate of policy A over policy B on the same prompts, judged by scores (ties count half)."""

import datasets
import evaluate

from minichatgpt.evaluation.stats import standard_error

_KWARGS = """
Args:
    predictions (list of float): scores of policy A's replies.
    references (list of float): scores of policy B's replies to the same prompts.
Returns:
    win_rate (float): share of prompts where A scores higher, ties counting half; win_rate_se, its standard error.
    mean_score_a, mean_score_b (float), with their standard errors mean_score_a_se, mean_score_b_se; pairs (int).
"""


class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Pairwise win rate between two policies judged by a reward model.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float"), "references": datasets.Value("float")}),
        )

    def _compute(self, predictions, references):
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(predictions, references)]
        return {
            "win_rate": sum(wins) / len(wins),
            "win_rate_se": standard_error(wins),
            "mean_score_a": sum(predictions) / len(predictions),
            "mean_score_a_se": standard_error(predictions),
            "mean_score_b": sum(references) / len(references),
            "mean_score_b_se": standard_error(references),
            "pairs": len(wins),
        }
