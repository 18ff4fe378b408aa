"""Relevance of replies to what was said, measured independently of the reward model: next-reply ranking under a
model's own likelihood, and the specificity of generated replies under an independent sentence-embedding model.
Evaluation only: nothing here chooses training data or rewards."""

import random

from minichatgpt.data.splits import sample_pairs
from minichatgpt.evaluation.metrics import load_metric

CANDIDATE_POOL = 50


def ranking_rows(conversations, context_turns: int, candidates: int = 10, max_contexts: int = 200, seed: int = 0
                 ) -> list[tuple[list[dict], list[str]]]:
    """(history, [real reply, k-1 replies from other conversations closest in length of a random pool]) for up to
    `max_contexts` held-out contexts spread over the conversations (`sample_pairs`); seeded, so every model is
    ranked on the same candidates."""
    rng = random.Random(seed)
    pairs = sample_pairs(conversations, context_turns, None, seed)
    rows = []
    for index, history, reply in pairs[:max_contexts]:
        pool = [text for other, _, text in rng.sample(pairs, min(CANDIDATE_POOL, len(pairs)))
                if other != index and text != reply]
        words = len(reply.split())
        pool = sorted(dict.fromkeys(pool), key=lambda text: abs(len(text.split()) - words))
        rows.append((history, [reply] + pool[: candidates - 1]))
    return rows


def next_reply_recall(model_dir, tokenizer, rows, per_context: bool = False) -> dict:
    contexts = [tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
                for history, _ in rows]
    return load_metric("next_reply_ranking").compute(predictions=[c for _, c in rows], references=contexts,
                                                     model_id=str(model_dir), per_context=per_context)


def last_user_turn(history: list[dict]) -> str:
    return next((m["content"] for m in reversed(history) if m["role"] == "user"), "")


def reply_specificity(histories: list[list[dict]], replies: list[str], human_replies: list[str],
                      per_reply: bool = False) -> dict:
    return load_metric("reply_specificity").compute(predictions=replies,
                                                    references=[last_user_turn(h) for h in histories],
                                                    human_replies=human_replies, per_reply=per_reply)
