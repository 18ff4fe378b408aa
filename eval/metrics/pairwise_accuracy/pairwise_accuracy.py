"""Reward-model pairwise accuracy: how often the chosen reply scores above the rejected one."""

import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of float): scores of the chosen replies.
    references (list of float): scores of the rejected replies of the same pairs.
Returns:
    accuracy (float): share of pairs with chosen > rejected.
    mean_margin (float): mean of chosen - rejected.
"""


class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Pairwise accuracy and margin of a reward model on preference pairs.",
            citation="Ouyang et al., Training language models to follow instructions with human feedback, 2022",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float"), "references": datasets.Value("float")}),
        )

    def _compute(self, predictions, references):
        margins = [c - r for c, r in zip(predictions, references)]
        return {"accuracy": sum(m > 0 for m in margins) / len(margins), "mean_margin": sum(margins) / len(margins)}
