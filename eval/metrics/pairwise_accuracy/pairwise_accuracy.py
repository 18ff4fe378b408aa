"""Reward-model pairwise accuracy: how often the chosen reply scores above the rejected one."""

import datasets
import evaluate

from minichatgpt.evaluation.stats import standard_error

_KWARGS = """
Args:
    predictions (list of float): scores of the chosen replies.
    references (list of float): scores of the rejected replies of the same pairs.
Returns:
    accuracy (float): share of pairs with chosen > rejected; accuracy_se, its standard error.
    mean_margin (float): mean of chosen - rejected; pairs (int).
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
        right = [float(m > 0) for m in margins]
        return {"accuracy": sum(right) / len(right), "accuracy_se": standard_error(right),
                "mean_margin": sum(margins) / len(margins), "pairs": len(margins)}
