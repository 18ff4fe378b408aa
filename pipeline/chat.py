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

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, HfArgumentParser, set_seed

from minichatgpt.chat import DECODING_FIELDS, STREAMED_STRATEGIES, Chat, check_decoding, decoding_config, set_setting
from minichatgpt.errors import PipelineError
from minichatgpt.generation import STRATEGIES
from minichatgpt.hub import read_metadata
from minichatgpt.model.loading import load_model, load_tokenizer, revision_folder


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
