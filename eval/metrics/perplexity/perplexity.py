"""Perplexity of a causal LM on texts, optionally conditioned on a context that is not scored."""

import math

import datasets
import evaluate
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minichatgpt.evaluation.stats import jackknife_standard_error

_KWARGS = """
Args:
    predictions (list of str): texts to score.
    model_id (str): causal LM folder.
    contexts (list of str, optional): a prefix per text that conditions it but is not scored (e.g. a rendered chat
        prompt, to score only the reply).
Returns:
    perplexity (float): exp of the mean negative log-likelihood per scored token over all texts.
    perplexity_se (float): its jackknife standard error over the texts.
    tokens (int): scored tokens; texts (int): texts with at least one.
"""


def pooled_perplexity(per_text: list[tuple[float, int]]) -> float:
    """exp(summed negative log-likelihood / summed tokens) of (nll, tokens) per text."""
    nll = sum(total for total, _ in per_text) / max(sum(tokens for _, tokens in per_text), 1)
    return math.exp(min(nll, 50.0))


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Token-weighted perplexity of a local causal language model.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id, contexts=None):
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, use_safetensors=True).eval()
        model.loss_type = "ForCausalLM"  # the config names none: said here, so the loss does not warn of a guess
        window = model.config.max_position_embeddings
        per_text = []
        for i, text in enumerate(predictions):
            context_ids = tokenizer(contexts[i], add_special_tokens=False)["input_ids"] if contexts else []
            text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = (context_ids + text_ids)[-window:]
            scored = min(len(text_ids), len(ids) - 1)
            if scored <= 0:
                continue
            input_ids = torch.tensor([ids])
            labels = input_ids.clone()
            labels[0, : len(ids) - scored] = -100
            with torch.no_grad():
                loss = model(input_ids=input_ids, labels=labels).loss.item()
            per_text.append((loss * scored, scored))
        return {"perplexity": pooled_perplexity(per_text), "perplexity_se": jackknife_standard_error(per_text,
                                                                                                      pooled_perplexity),
                "tokens": sum(scored for _, scored in per_text), "texts": len(per_text)}
