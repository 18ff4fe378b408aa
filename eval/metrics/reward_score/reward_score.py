"""Reward-model score of conversations: the scalar head's output at the last token of each rendered conversation."""

import datasets
import evaluate
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

_KWARGS = """
Args:
    predictions (list of str): conversations rendered with the reward model's chat template, each ending with the
        reply to judge (`tokenizer.apply_chat_template(messages, tokenize=False)`).
    model_id (str): reward model folder.
    batch_size (int): default 16.
Returns:
    scores (list of float), mean_score (float).
"""


class RewardScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Scores replies with a reward model (AutoModelForSequenceClassification, num_labels=1).",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id, batch_size=16):
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        tokenizer.padding_side = "right"
        model = AutoModelForSequenceClassification.from_pretrained(model_id, use_safetensors=True).eval()
        max_length = model.config.max_position_embeddings
        scores = []
        for start in range(0, len(predictions), batch_size):
            tokenizer.truncation_side = "left"
            batch = tokenizer(predictions[start : start + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length, add_special_tokens=False)
            with torch.no_grad():
                scores.extend(model(**batch).logits[:, 0].float().tolist())
        return {"scores": scores, "mean_score": sum(scores) / len(scores)}
