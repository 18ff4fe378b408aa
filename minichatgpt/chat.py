"""A conversation with a chat model: decoding strategies, replies (streamed or reranked), the seed's decode(), and
settings checked before generate() sees them."""

import copy

from transformers import GenerationConfig, TextStreamer

from minichatgpt.data.chat_format import escape_special_tokens
from minichatgpt.errors import PipelineError
from minichatgpt.generation import MMI_DEFAULTS, STRATEGIES, cut_at_end, end_of_turn_ids, fit_history, token_pmi_scores

STREAMED_STRATEGIES = ("greedy", "sample")  # beam search and reranking know their reply only at the end


DECODING_FIELDS = ("max_new_tokens", "num_beams", "length_penalty", "early_stopping", "temperature", "top_k",
                   "top_p", "repetition_penalty", "no_repeat_ngram_size", "num_candidates", "mmi_lambda")


def decoding_config(base: GenerationConfig, strategy: str, **overrides) -> GenerationConfig:
    """The model's generation_config.json defaults, set to `strategy`, with the given non-None overrides."""
    if strategy not in STRATEGIES:
        raise PipelineError(f"unknown strategy '{strategy}'; expected one of {', '.join(STRATEGIES)}")
    config = copy.deepcopy(base)
    for name, value in MMI_DEFAULTS.items():
        if getattr(config, name, None) is None:  # a model pushed before mmi existed
            setattr(config, name, value)
    config.do_sample = strategy in ("sample", "mmi")
    config.num_beams = (overrides.get("num_beams") or max(base.num_beams or 1, 4)) if strategy == "beam" else 1
    if strategy != "sample":
        config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50
    if strategy != "beam":
        config.length_penalty, config.early_stopping = 1.0, False
    for name, value in overrides.items():
        if value is not None and name in DECODING_FIELDS and not (name == "num_beams" and strategy != "beam"):
            setattr(config, name, value)
    config.num_return_sequences = config.num_candidates if strategy == "mmi" else 1
    return config


def reply_ids(model, tokenizer, prompt_ids: list[int], config: GenerationConfig, streamer=None) -> list[int]:
    """The reply's token ids as generated, up to and including its end-of-turn token when it wrote one; `streamer`
    (e.g. a TextStreamer) gets its tokens as they are made. With several candidates (mmi), the best by MMI."""
    import torch

    input_ids = torch.tensor([prompt_ids], device=model.device)
    candidates = config.num_return_sequences or 1
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                             streamer=streamer if candidates == 1 else None)
    ends = set(end_of_turn_ids(tokenizer))
    rows = [cut_at_end(row, ends) for row in out[:, len(prompt_ids):].tolist()]
    return rows[0] if candidates == 1 else mmi_rerank(model, tokenizer, prompt_ids, rows, config.mmi_lambda)


def reply(model, tokenizer, prompt_ids: list[int], config: GenerationConfig, stream: bool = False,
          streamer=None) -> str:
    """The reply to `prompt_ids`; `stream` prints it as it is made, `streamer` (e.g. a TextIteratorStreamer) gets
    its tokens instead."""
    if streamer is None and stream and (config.num_return_sequences or 1) == 1:
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    return tokenizer.decode(reply_ids(model, tokenizer, prompt_ids, config, streamer), skip_special_tokens=True).strip()


def mmi_rerank(model, tokenizer, prompt_ids: list[int], candidates: list[list[int]], mmi_lambda: float) -> list[int]:
    """The candidate (token ids) with the highest per-token log p(reply | prompt) - mmi_lambda * log p(reply | empty
    prompt); an empty reply only when every candidate is empty."""
    texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in candidates]
    unique = list({text: ids for text, ids in zip(texts, candidates) if text}.values()) or candidates[:1]
    scores = token_pmi_scores(model, tokenizer, [prompt_ids] * len(unique), unique, mmi_lambda)
    return unique[max(range(len(unique)), key=scores.__getitem__)]


def decode(model, tokenizer, text: str, strategy: str = "greedy", max_len: int = 50, beam_width: int = 5,
           repetition_penalty: float = 1.2) -> str:
    """The original tutorial's call shape: one reply to `text` with greedy or beam search."""
    names = {"greedy": "greedy", "beam_search": "beam", "beam": "beam", "sample": "sample"}
    if strategy not in names:
        raise PipelineError(f"unknown strategy '{strategy}'; expected greedy or beam_search")
    config = decoding_config(model.generation_config, names[strategy], max_new_tokens=max_len, num_beams=beam_width,
                             repetition_penalty=repetition_penalty)
    prompt_ids, _ = fit_history(tokenizer, [{"role": "user", "content": text}],
                                model.config.max_position_embeddings - max_len)
    return reply(model, tokenizer, prompt_ids, config)


class Chat:
    """A conversation with a history that is trimmed from the oldest turn when it outgrows the context window."""

    def __init__(self, model, tokenizer, config: GenerationConfig, system: str | None, plain: bool):
        self.model, self.tokenizer, self.config, self.system, self.plain = model, tokenizer, config, system, plain
        self.history: list[dict] = []

    def prompt_ids(self, text: str) -> tuple[list[int], int]:
        budget = self.model.config.max_position_embeddings - self.config.max_new_tokens
        if budget <= 0:
            raise PipelineError(f"max_new_tokens ({self.config.max_new_tokens}) fills the whole context window")
        if self.plain:
            return self.tokenizer(escape_special_tokens(text))["input_ids"][-budget:], 0
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = system + self.history + [{"role": "user", "content": text}]
        ids, dropped = fit_history(self.tokenizer, messages, budget)
        if dropped:
            # Forget what no longer fits, so the next turn does not pay to trim it again.
            self.history = self.history[dropped:]
        return ids, dropped

    def say(self, text: str, stream: bool = False) -> tuple[str, int]:
        ids, dropped = self.prompt_ids(text)
        answer = reply(self.model, self.tokenizer, ids, self.config, stream=stream)
        if not self.plain:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer, dropped


def check_decoding(config: GenerationConfig, context: int):
    """Refuse, naming the setting, what generate() would raise on deep inside transformers, and a reply length that
    leaves no room for the prompt in a `context`-token window."""
    expected = {
        "max_new_tokens": (lambda v: 1 <= v < context, f"from 1 to {context - 1} (the model's context is {context})"),
        "temperature": (lambda v: v > 0 or not config.do_sample, "above 0"),
        "top_p": (lambda v: 0 < v <= 1, "above 0 and at most 1"),
        "top_k": (lambda v: v >= 0, "0 (every token) or more"),
        "repetition_penalty": (lambda v: v > 0, "above 0"),
        "num_beams": (lambda v: v >= 1, "at least 1"),
        "no_repeat_ngram_size": (lambda v: v >= 0, "0 (off) or more"),
        "num_candidates": (lambda v: v >= 1, "at least 1"),
    }
    for name, (valid, what) in expected.items():
        value = getattr(config, name, None)
        if value is not None and not valid(value):
            raise PipelineError(f"{name} must be {what}, got {value}")


def set_setting(config: GenerationConfig, name: str, value: str, context: int):
    """Set one decoding setting of `config` from its text, typed as the setting is, if the result is a valid
    decoding; returns the typed value."""
    if name not in DECODING_FIELDS:
        raise ValueError(f"unknown setting '{name}'; settings: strategy, {', '.join(DECODING_FIELDS)}")
    current = getattr(config, name)
    kind = type(current) if current is not None else float
    caster = {bool: lambda v: v.lower() in ("1", "true", "yes")}.get(kind, kind)
    try:
        typed = caster(value)
    except ValueError:
        raise ValueError(f"{name} takes {'an integer' if kind is int else 'a number'}, got '{value}'") from None
    trial = copy.deepcopy(config)
    setattr(trial, name, typed)
    check_decoding(trial, context)
    setattr(config, name, typed)
    return typed
