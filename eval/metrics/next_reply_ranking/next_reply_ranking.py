"""Next-reply ranking: does a chat model's likelihood pick the real reply out of candidates from other
conversations? Recall@1 of k, by log p(reply | context) and by pointwise mutual information."""

import datasets
import evaluate
from transformers import AutoModelForCausalLM, AutoTokenizer

from minichatgpt.evaluation.stats import standard_error
from minichatgpt.generation import EMPTY_PROMPT, reply_log_likelihoods, reply_token_ids

_KWARGS = """
Args:
    predictions (list of list of str): candidate replies per context, the real reply first.
    references (list of str): each context rendered with the chat template and its generation prompt
        (`tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)`).
    model_id (str): causal LM folder.
    batch_size (int): default 32.
    per_context (bool): also return `hits_pmi`, 1.0 or 0.0 per context, for paired comparisons of two models.
Returns:
    recall_at_1 (float): share of contexts whose real reply has the highest log p(reply | context); chance 1/k.
    recall_at_1_pmi (float): the same, ranked by log p(reply | context) - log p(reply | empty prompt).
    recall_at_1_se, recall_at_1_pmi_se (float): their standard errors; contexts (int).
    mean_rank (float): mean 1-based rank of the real reply by log p(reply | context).
    candidates (int): k, candidates per context.
    hits_pmi (list of float): with `per_context`, whether PMI ranked each context's real reply first.
"""


def first_is_best(scores: list[float]) -> bool:
    return all(scores[0] > other for other in scores[1:])


class NextReplyRanking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Recall@1 of the real next reply among candidates, ranked by a causal LM's likelihood.",
            citation="Lowe et al. 2015, The Ubuntu Dialogue Corpus (next-utterance ranking, recall@1 of 10)",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, model_id, batch_size=32, per_context=False):
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, use_safetensors=True).eval()
        empty = tokenizer.apply_chat_template(EMPTY_PROMPT, add_generation_prompt=True, return_dict=False)
        prompts, replies, spans = [], [], []
        for candidates, context in zip(predictions, references):
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            spans.append((len(replies), len(replies) + len(candidates)))
            prompts += [context_ids] * len(candidates)
            replies += [reply_token_ids(tokenizer, c) for c in candidates]
        conditional = reply_log_likelihoods(model, prompts, replies, batch_size)
        prior = reply_log_likelihoods(model, [empty] * len(replies), replies, batch_size)
        hits, hits_pmi, ranks = [], [], 0
        for start, end in spans:
            scores = conditional[start:end]
            hits.append(float(first_is_best(scores)))
            hits_pmi.append(float(first_is_best([c - u for c, u in zip(scores, prior[start:end])])))
            ranks += 1 + sum(other >= scores[0] for other in scores[1:])
        n = max(len(spans), 1)
        result = {"recall_at_1": sum(hits) / n, "recall_at_1_se": standard_error(hits),
                  "recall_at_1_pmi": sum(hits_pmi) / n, "recall_at_1_pmi_se": standard_error(hits_pmi),
                  "mean_rank": ranks / n, "candidates": max((end - start for start, end in spans), default=0),
                  "contexts": len(spans)}
        return {**result, "hits_pmi": hits_pmi} if per_context else result
