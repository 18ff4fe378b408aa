"""Talk to a model of the hub: interactive multi-turn chat, one reply with --prompt, or one reply per line of a file.

    python pipeline/chat.py --model hub/quickstart-ppo
    python pipeline/chat.py --model hub/smoke-ppo --prompt "how are you ?" --strategy beam --num_beams 5 --repetition_penalty 1.2
    python pipeline/chat.py --model hub/quickstart-ppo --prompts_file prompts.txt --strategy mmi > replies.txt

Strategy mmi samples --num_candidates replies and keeps the one with the highest maximum-mutual-information score,
log p(reply | history) - mmi_lambda * log p(reply | empty prompt) per token (Li et al. 2016), which prefers a reply
that fits what was said over one that fits anything ("i don't know").

A base model (`-base`) continues plain text instead of chatting. In the interactive mode: /reset clears the history,
/settings shows the decoding settings, /set NAME VALUE changes one (e.g. /set temperature 0.9), /quit leaves.
"""

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, GenerationConfig, HfArgumentParser, TextStreamer, set_seed

from pipeline.chat_format import escape_special_tokens
from pipeline.common import load_model, load_tokenizer, revision_folder
from pipeline.errors import PipelineError
from pipeline.generation import MMI_DEFAULTS, STRATEGIES, cut_at_end, end_of_turn_ids, fit_history, token_pmi_scores
from pipeline.hub import read_metadata

STREAMED_STRATEGIES = ("greedy", "sample")  # beam search and reranking know their reply only at the end
DECODING_FIELDS = ("max_new_tokens", "num_beams", "length_penalty", "early_stopping", "temperature", "top_k",
                   "top_p", "repetition_penalty", "no_repeat_ngram_size", "num_candidates", "mmi_lambda")


@dataclass
class ChatArguments:
    model: str = field(metadata={"help": "Model folder, e.g. hub/quickstart-ppo (or -sft, or -base for plain text)."})
    prompt: str | None = field(default=None, metadata={"help": "Reply to this once and exit (no interactive mode)."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "Reply to each line of this file as a new single-turn conversation; one reply "
                                "per line on stdout (newlines in a reply become spaces), then exit."})
    system: str | None = field(default=None, metadata={"help": "System prompt kept at the start of the history."})
    strategy: str = field(default="sample", metadata={"help": "greedy, beam, sample or mmi.", "choices": STRATEGIES})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Reply length cap in tokens."})
    num_beams: int | None = field(default=None, metadata={"help": "Beams for --strategy beam (default 4)."})
    length_penalty: float | None = field(default=None, metadata={"help": "Beam search length penalty."})
    early_stopping: bool | None = field(default=None, metadata={"help": "Stop beam search when num_beams are done."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k most likely tokens (0: all)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass."})
    repetition_penalty: float | None = field(default=None, metadata={"help": "Penalty > 1 discourages repeats."})
    no_repeat_ngram_size: int | None = field(default=None, metadata={"help": "Forbid repeating n-grams of this size."})
    num_candidates: int | None = field(default=None, metadata={"help": "Sampled candidates for --strategy mmi (8)."})
    mmi_lambda: float | None = field(
        default=None, metadata={"help": "Weight of the reply's own likelihood subtracted by --strategy mmi (0.5)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling."})
    plain: bool = field(default=False, metadata={"help": "Continue plain text even if the model is a chat model."})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks."})


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


def interactive(chat: Chat, args: ChatArguments):
    strategy = args.strategy
    # What the user chose, by flag or /set: kept when the strategy changes, which starts from the model's defaults.
    settings = {name: getattr(args, name) for name in DECODING_FIELDS if getattr(args, name) is not None}
    mode = "plain text continuation" if chat.plain else "chat"
    print(f"{args.model}: {mode}, {strategy} decoding. /reset, /settings, /set NAME VALUE, /quit (or Ctrl-D).")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            chat.history = []
            print("(history cleared)")
            continue
        if line == "/settings":
            values = ", ".join(f"{n}={getattr(chat.config, n)}" for n in DECODING_FIELDS)
            print(f"strategy={strategy}, {values}")
            continue
        if line.startswith("/set "):
            parts = line.split()
            try:
                if len(parts) != 3:
                    raise ValueError("usage: /set NAME VALUE")
                if parts[1] == "strategy":
                    config = decoding_config(chat.model.generation_config, parts[2], **settings)
                    check_decoding(config, chat.model.config.max_position_embeddings)
                    chat.config, strategy = config, parts[2]
                else:
                    settings[parts[1]] = set_setting(chat.config, parts[1], parts[2],
                                                     chat.model.config.max_position_embeddings)
            except (ValueError, PipelineError) as err:
                print(f"(error: {err})")
            continue
        stream = strategy in STREAMED_STRATEGIES
        try:
            if stream:
                print("bot> ", end="", flush=True)
            answer, dropped = chat.say(line, stream=stream)
        except KeyboardInterrupt:
            print("\n(interrupted)")
            continue
        except PipelineError as err:
            print(f"(error: {err})")
            continue
        if not stream:
            print(f"bot> {answer}")
        if dropped:
            print(f"(dropped {dropped} oldest turn(s) to fit the context window)")


def read_prompts(path: str) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise PipelineError(f"{path}: prompts file not found") from None
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: not valid UTF-8 at byte {err.start}; expected one prompt per line") from None


def main():
    (args,) = HfArgumentParser(ChatArguments).parse_args_into_dataclasses()
    try:
        set_seed(args.seed)
        files = revision_folder(args.model)
        tokenizer = load_tokenizer(files, "model's tokenizer")
        model = load_model(files, AutoModelForCausalLM, "model", tokenizer=tokenizer).eval()
        plain = args.plain or read_metadata(args.model).get("stage") == "pretrain" or not tokenizer.chat_template
        overrides = {name: getattr(args, name) for name in DECODING_FIELDS}
        config = decoding_config(model.generation_config, args.strategy, **overrides)
        check_decoding(config, model.config.max_position_embeddings)
        chat = Chat(model, tokenizer, config, args.system, plain)
        if args.prompt is not None:
            print(chat.say(args.prompt)[0])
        elif args.prompts_file is not None:
            for prompt in read_prompts(args.prompts_file):
                # Each line is answered as `--prompt` would answer it alone, whatever comes before it.
                set_seed(args.seed)
                chat.history = []
                print(" ".join(chat.say(prompt)[0].split()) if prompt else "", flush=True)
        else:
            interactive(chat, args)
    except PipelineError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
