"""Pairwise win rate of policy A over policy B on the same prompts, judged by scores (ties count half)."""

import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of float): scores of policy A's replies.
    references (list of float): scores of policy B's replies to the same prompts.
Returns:
    win_rate (float): share of prompts where A scores higher, ties counting half.
    mean_score_a, mean_score_b (float).
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
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(predictions, references))
        return {
            "win_rate": wins / len(predictions),
            "mean_score_a": sum(predictions) / len(predictions),
            "mean_score_b": sum(references) / len(references),
        }
