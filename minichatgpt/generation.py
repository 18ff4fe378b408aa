"""Chat replies and what is measured on them: prompts rendered to fit the context window, replies generated with
left padding and kept as generated, reward-model scores, and log-likelihoods and PMI of replies."""

from minichatgpt.data.chat_format import END_OF_TEXT, END_OF_TURN, escape_special_tokens


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end a reply: the end-of-turn marker and end-of-text."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (END_OF_TURN, END_OF_TEXT)]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


# The decodings a chat model replies with (pipeline/chat.py) and the evaluation compares policies on.
STRATEGIES = ("greedy", "beam", "sample", "mmi")

# Maximum-mutual-information reranking (`chat.py --strategy mmi`): sampled candidates, and the weight of the reply's
# own likelihood subtracted from its likelihood given the conversation.
MMI_DEFAULTS = {"num_candidates": 8, "mmi_lambda": 0.5}


def chat_generation_config(tokenizer, max_new_tokens: int = 64):
    """Defaults shipped with every chat model: stop at the end of the turn, sample, never repeat a 3-gram.
    Not `repetition_penalty`: transformers applies it to the prompt's tokens too, so it steers replies away from the
    words of what was said (on the chat-hour SFT model it cut reply specificity from 0.48 to 0.32)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=end_of_turn_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=3,
        **MMI_DEFAULTS,
    )


def fit_history(tokenizer, messages: list[dict], max_tokens: int | None) -> tuple[list[int], int]:
    """Token ids of `messages` with the generation prompt, dropping the oldest turns until they fit in `max_tokens`
    (a leading system turn and the last turn are always kept); also returns how many turns were dropped."""
    messages = list(messages)
    keep_first = 1 if messages and messages[0]["role"] == "system" else 0
    dropped = 0
    while True:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        if max_tokens is None or len(ids) <= max_tokens:
            return ids, dropped
        if len(messages) - keep_first <= 1:
            return ids[-max_tokens:], dropped
        del messages[keep_first]
        dropped += 1


def render_prompts(tokenizer, conversations: list[list[dict]], max_prompt_tokens: int | None = None) -> list[list[int]]:
    return [fit_history(tokenizer, messages, max_prompt_tokens)[0] for messages in conversations]


def generate_reply_ids(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16,
                       max_prompt_tokens: int | None = None, **generate_kwargs) -> tuple[list[list[int]], list[list[int]]]:
    """The rendered prompts and the replies of a chat model to conversations ending at a user turn, as token ids,
    via `generate()` with left padding: each reply as generated, up to and including the first end token when it
    wrote one (a reply cut off by the length limit has none). Without a `generation_config`, the chat's shipped
    `no_repeat_ngram_size` is off unless asked for: it would hide the loops these replies measure."""
    import torch

    if "generation_config" not in generate_kwargs:
        generate_kwargs.setdefault("no_repeat_ngram_size", 0)
    ends = set(end_of_turn_ids(tokenizer))
    prompts = render_prompts(tokenizer, conversations, max_prompt_tokens)
    replies = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                 **generate_kwargs)
        replies.extend(cut_at_end(row, ends) for row in out[:, width:].tolist())
    return prompts, replies


def ended(tokenizer, reply_ids: list[list[int]]) -> list[bool]:
    """Whether each reply ends its turn (a reply cut off by the length limit does not)."""
    ends = set(end_of_turn_ids(tokenizer))
    return [bool(ids) and ids[-1] in ends for ids in reply_ids]


def cut_at_end(tokens: list[int], ends: set[int]) -> list[int]:
    """A generated row up to and including its first end token; the padding after it is not part of the reply."""
    end = next((i for i, token in enumerate(tokens) if token in ends), None)
    return tokens if end is None else tokens[: end + 1]


def reply_texts(tokenizer, reply_ids: list[list[int]]) -> list[str]:
    """Replies as token ids decoded to text, special tokens left out."""
    return [r.strip() for r in tokenizer.batch_decode(reply_ids, skip_special_tokens=True)]


def generate_replies(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16,
                     max_prompt_tokens: int | None = None, **generate_kwargs) -> list[str]:
    """`generate_reply_ids` decoded: the replies' text."""
    _, replies = generate_reply_ids(model, tokenizer, conversations, batch_size, max_prompt_tokens, **generate_kwargs)
    return reply_texts(tokenizer, replies)


def scored_replies(reward_model, tokenizer, prompt_ids: list[list[int]], reply_ids: list[list[int]]
                   ) -> tuple[list[str], list[float]]:
    """Replies as text, and the reward model's scores of them as they were generated: a reply cut off by the length
    limit is scored without an end of turn, as the RL stage scored it."""
    scores = score_sequences(reward_model, [p + r for p, r in zip(prompt_ids, reply_ids)], tokenizer.pad_token_id)
    return reply_texts(tokenizer, reply_ids), scores


def right_padded(rows: list[list[int]], pad_token_id: int, device):
    """Token rows as one right-padded batch on `device`: input ids, attention mask, and each row's length."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows], device=device)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    attention = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return input_ids, attention, lengths


def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """Reward-model scores of whole conversations (ending with the reply to judge), rendered with the chat template;
    the score is read at the last token, the reply's end-of-turn marker, as TRL's trainers do."""
    return score_sequences(model, [tokenizer.apply_chat_template(c, return_dict=False) for c in conversations],
                           tokenizer.pad_token_id, batch_size)


def score_pairs(model, tokenizer, pairs) -> tuple[list[float], list[float]]:
    """Reward-model scores of each preference pair's prompt + chosen reply and prompt + rejected reply."""
    return tuple(score_conversations(model, tokenizer, [p + r for p, r in zip(pairs["prompt"], pairs[side])])
                 for side in ("chosen", "rejected"))


def score_sequences(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """Reward-model scores of token sequences, read at each sequence's last token; a sequence too long for the
    context window loses its oldest tokens."""
    import torch

    window = model.config.max_position_embeddings
    scores = []
    model.eval()
    for start in range(0, len(sequences), batch_size):
        rows = [ids[-window:] for ids in sequences[start : start + batch_size]]
        input_ids, attention, lengths = right_padded(rows, pad_token_id, model.device)
        with torch.no_grad():
            # Read the score at each row's last real token ourselves: the padding token may also occur in a reply.
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            logits = model.score(hidden[torch.arange(len(rows), device=model.device), lengths - 1])
        scores.extend(logits[:, 0].float().cpu().tolist())
    return scores


# The prompt that conditions on nothing: p(reply | empty prompt) is the reply's prior under a chat model, the
# "anti-language model" of maximum-mutual-information decoding.
EMPTY_PROMPT = [{"role": "user", "content": ""}]


def reply_token_ids(tokenizer, reply: str) -> list[int]:
    """Token ids of a reply as the chat template writes it after the generation prompt, end-of-turn included."""
    return tokenizer(f"{escape_special_tokens(reply)}{END_OF_TURN}", add_special_tokens=False)["input_ids"]


def reply_log_likelihoods(model, prompts: list[list[int]], replies: list[list[int]], batch_size: int = 32
                          ) -> list[float]:
    """Sum of log p(reply tokens | prompt tokens) under a causal LM for each (prompt, reply) pair; a prompt too long
    for the context window loses its oldest tokens. Pairs are batched by length, so that little is padding."""
    import torch

    window = model.config.max_position_embeddings
    pad = model.config.pad_token_id or 0
    rows = []
    for prompt, reply in zip(prompts, replies):
        reply = reply[: window - 1]
        rows.append((prompt[-(window - len(reply)):] if len(prompt) + len(reply) > window else prompt, reply))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    totals = [0.0] * len(rows)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        input_ids, attention, lengths = right_padded([p + r for p, r in batch], pad, model.device)
        # Token t is predicted at position t-1; a reply with no prompt token before it loses its first token.
        first = torch.tensor([max(len(p), 1) for p, _ in batch], device=model.device)
        positions = torch.arange(1, input_ids.shape[1], device=model.device)[None, :]
        scored = (positions >= first[:, None]) & (positions < lengths[:, None])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        for i, total in zip(order[start : start + batch_size], (token_log_probs * scored).sum(-1).cpu().tolist()):
            totals[i] = total
    return totals


def token_pmi_scores(model, tokenizer, prompts: list[list[int]], replies: list[list[int]], mmi_lambda: float = 1.0,
                     batch_size: int = 32) -> list[float]:
    """Per-token log p(reply | prompt) - mmi_lambda * log p(reply | empty prompt) for rendered prompts (token ids
    ending with the generation prompt) and replies as token ids: how much the prompt explains the reply beyond the
    reply's own likelihood (pointwise mutual information at mmi_lambda = 1)."""
    conditional = reply_log_likelihoods(model, prompts, replies, batch_size)
    if not mmi_lambda:
        return [c / max(len(ids), 1) for c, ids in zip(conditional, replies)]
    empty = tokenizer.apply_chat_template(EMPTY_PROMPT, add_generation_prompt=True, return_dict=False)
    prior = reply_log_likelihoods(model, [empty] * len(replies), replies, batch_size)
    return [(c - mmi_lambda * u) / max(len(ids), 1) for c, u, ids in zip(conditional, prior, replies)]


def sample_replies(model, tokenizer, prompts: list[str], end_token_id: int, max_new_tokens: int = 32) -> list[str]:
    """A model card's sample replies to single-turn prompts: greedy, with repetition penalty 1.2."""
    return generate_replies(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                            max_prompt_tokens=model.config.max_position_embeddings - max_new_tokens, do_sample=False,
                            max_new_tokens=max_new_tokens, eos_token_id=end_token_id,
                            pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.2)
