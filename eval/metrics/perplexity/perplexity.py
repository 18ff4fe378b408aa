"""Perplexity of a causal LM on texts, optionally conditioned on a context that is not scored."""

import math

import datasets
import evaluate
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

_KWARGS = """
Args:
    predictions (list of str): texts to score.
    model_id (str): causal LM folder.
    contexts (list of str, optional): a prefix per text that conditions it but is not scored (e.g. a rendered chat
        prompt, to score only the reply).
Returns:
    perplexity (float): exp of the mean negative log-likelihood per scored token over all texts.
    tokens (int): scored tokens.
"""


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
        window = model.config.max_position_embeddings
        total_nll, total_tokens = 0.0, 0
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
            total_nll += loss * scored
            total_tokens += scored
        nll = total_nll / max(total_tokens, 1)
        return {"perplexity": math.exp(min(nll, 50.0)), "tokens": total_tokens}
