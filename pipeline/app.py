"""Chat with a model of the hub in the browser, or let people compare models and keep their votes as reward-model data.

    python pipeline/app.py --model hub/quickstart-ppo
    python pipeline/app.py --arena hub/quickstart-sft hub/quickstart-ppo --votes votes/quickstart.jsonl
    python pipeline/app.py --tally votes/quickstart.jsonl

The page is served on 127.0.0.1 (--host to change, --port for the port), never through a share link. In the arena,
each prompt is answered by two of the models, drawn at random and shown unnamed as A and B; the person votes A, B,
tie or both bad, and then sees which model was which. Each vote is appended to --votes as one JSON line in TRL's
preference format (prompt, chosen and rejected as message lists) plus the models, the decoding settings and the time;
the reward stage reads that file through `data.preference_sources`. A tie or a both-bad vote is kept in the file with
both replies (reply_a, reply_b) but makes no training pair: neither reply is known to be the better one.
"""

import functools
import os
import random
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, HfArgumentParser, TextIteratorStreamer, set_seed

from pipeline.chat import DECODING_FIELDS, STRATEGIES, STREAMED_STRATEGIES, Chat, decoding_config, reply
from pipeline.common import load_model, load_tokenizer
from pipeline.errors import PipelineError
from pipeline.hub import read_metadata
from pipeline.votes import VOTES, append_vote, read_votes, tally_table, vote_row

# Beam search (and reranking strategies) pick the reply among several at the end, so there is nothing to stream.
# Decoding settings shown as sliders: (label, minimum, maximum, step); max_new_tokens goes up to the context.
SLIDERS = {
    "max_new_tokens": ("Max new tokens", 1, None, 1),
    "temperature": ("Temperature", 0.05, 2.0, 0.05),
    "top_p": ("Top-p", 0.05, 1.0, 0.05),
    "repetition_penalty": ("Repetition penalty", 1.0, 2.0, 0.05),
    "no_repeat_ngram_size": ("No repeated n-grams of size (0: off)", 0, 6, 1),
    "num_beams": ("Beams (beam search)", 1, 8, 1),
    "num_candidates": ("Candidates (mmi)", 1, 16, 1),
    "mmi_lambda": ("MMI lambda (mmi)", 0.0, 1.0, 0.05),
}
assert set(SLIDERS) <= set(DECODING_FIELDS)
# Replies are shown as the model wrote them (not as Markdown), with no button that shares them.
CHATBOT = {"render_markdown": False, "buttons": ["copy", "copy_all"]}


@dataclass
class AppArguments:
    model: str | None = field(default=None, metadata={"help": "Chat model folder, e.g. hub/quickstart-ppo."})
    arena: list[str] | None = field(
        default=None, metadata={"help": "Two or more chat model folders to compare side by side (arena mode)."}
    )
    votes: str = field(default="votes/arena.jsonl", metadata={"help": "Arena votes are appended to this file."})
    tally: str | None = field(default=None, metadata={"help": "Print the win rates in this vote file and exit."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 opens it to the network)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    system: str | None = field(default=None, metadata={"help": "Initial system prompt."})
    strategy: str = field(default="sample", metadata={"help": "Initial decoding strategy.", "choices": STRATEGIES})
    seed: int = field(default=0, metadata={"help": "Seed for sampling and for drawing arena pairs."})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks."})


@functools.cache
def load_chat_model(folder: str):
    """A chat model and its tokenizer, loaded once and shared by every session (generation does not change them)."""
    tokenizer = load_tokenizer(folder, "model's tokenizer")
    stage = read_metadata(folder).get("stage")
    if stage in ("pretrain", "reward") or not tokenizer.chat_template:
        raise PipelineError(f"{folder}: not a chat model (stage {stage or 'unknown'}, chat template "
                            f"{'present' if tokenizer.chat_template else 'missing'}); use an -sft or -ppo model")
    return load_model(folder, AutoModelForCausalLM, "model", tokenizer=tokenizer).eval(), tokenizer


def new_chat(folder: str, system: str, strategy: str, settings: dict, history: list[dict]) -> Chat:
    model, tokenizer = load_chat_model(folder)
    config = decoding_config(model.generation_config, strategy, **settings)
    chat = Chat(model, tokenizer, config, system.strip() or None, plain=False)
    chat.history = list(history)
    return chat


def turn_prompt(chat: Chat, text: str) -> tuple[list[int], int]:
    """Prompt ids for the next turn (oldest turns dropped to fit) and how many turns were dropped; a PipelineError
    for an empty message or one that does not fit the context window on its own."""
    if not text.strip():
        raise PipelineError("the message is empty; type something first")
    context = chat.model.config.max_position_embeddings
    budget = context - chat.config.max_new_tokens
    alone = ([{"role": "system", "content": chat.system}] if chat.system else []) + [{"role": "user", "content": text}]
    needed = len(chat.tokenizer.apply_chat_template(alone, add_generation_prompt=True, return_dict=False))
    if budget > 0 and needed > budget:
        raise PipelineError(f"the message (with the system prompt) is {needed} tokens, but with max new tokens "
                            f"{chat.config.max_new_tokens} the {context}-token context leaves room for {budget}; "
                            "shorten it or lower max new tokens")
    return chat.prompt_ids(text)


def stream_reply(chat: Chat, prompt_ids: list[int], strategy: str):
    """Yields the reply as it grows, token by token, and last the whole reply as `reply()` returns it."""
    if strategy not in STREAMED_STRATEGIES:
        yield reply(chat.model, chat.tokenizer, prompt_ids, chat.config)
        return
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome = {}

    def generate():
        try:
            outcome["reply"] = reply(chat.model, chat.tokenizer, prompt_ids, chat.config, streamer=streamer)
        except Exception as err:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = err
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text.strip()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["reply"]


def decoding_record(strategy: str, config) -> dict:
    """The settings a reply was decoded with, as `decoding_config` set them for the strategy."""
    return {"strategy": strategy} | {name: getattr(config, name) for name in DECODING_FIELDS}


def dropped_notice(dropped: int) -> str:
    return f"(dropped {dropped} oldest turn(s) to fit the context window)" if dropped else ""


# ---------------------------------------------------------------- the page


def decoding_controls(gr, args: AppArguments, folder: str):
    """The system prompt, strategy and slider controls, starting where `decoding_config` starts from the model's
    defaults: sampling's values, and beam search's number of beams."""
    model, _ = load_chat_model(folder)
    starts = {strategy: decoding_config(model.generation_config, strategy) for strategy in ("sample", "beam")}
    system = gr.Textbox(label="System prompt", value=args.system or "", lines=2, elem_id="system")
    strategy = gr.Radio(list(STRATEGIES), value=args.strategy, label="Decoding strategy", elem_id="strategy")
    sliders = []
    for name, (label, low, high, step) in SLIDERS.items():
        high = high or model.config.max_position_embeddings - 1
        value = getattr(starts["beam" if name == "num_beams" else "sample"], name) or low
        sliders.append(gr.Slider(low, high, value=min(max(value, low), high), step=step, label=label,
                                 elem_id=name))
    return system, strategy, sliders


def slider_settings(values) -> dict:
    return {name: int(value) if isinstance(SLIDERS[name][3], int) else float(value)
            for name, value in zip(SLIDERS, values)}


def chat_page(gr, args: AppArguments):
    def send(message, shown, history, folder, system, strategy, *values):
        try:
            chat = new_chat(folder, system, strategy, slider_settings(values), history)
            prompt_ids, dropped = turn_prompt(chat, message)
        except PipelineError as err:
            yield message, shown, history, f"error: {err}"
            return
        shown = shown + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for text in stream_reply(chat, prompt_ids, strategy):
            shown[-1] = {"role": "assistant", "content": text}
            yield "", shown, history, dropped_notice(dropped)
        chat.history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        yield "", shown, chat.history, dropped_notice(dropped)

    def load(folder_text, folder):
        try:
            load_chat_model(folder_text.strip())
        except PipelineError as err:
            return folder, [], [], f"error: {err} (still chatting with {folder})"
        return folder_text.strip(), [], [], f"chatting with {folder_text.strip()}; history cleared"

    with gr.Blocks(title="minichatgpt chat") as page:
        history = gr.State([])
        folder = gr.State(args.model)
        gr.Markdown("## minichatgpt chat")
        with gr.Row():
            with gr.Column(scale=3):
                shown = gr.Chatbot(label="Conversation", elem_id="conversation", height=380, **CHATBOT)
                message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False,
                                     elem_id="message")
                with gr.Row():
                    send_button = gr.Button("Send", variant="primary", elem_id="send")
                    reset_button = gr.Button("Reset", elem_id="reset")
                notice = gr.Markdown(elem_id="notice")
            with gr.Column(scale=2):
                folder_box = gr.Textbox(value=args.model, label="Model folder", elem_id="model")
                load_button = gr.Button("Load model", elem_id="load", size="sm")
                system, strategy, sliders = decoding_controls(gr, args, args.model)
        inputs = [message, shown, history, folder, system, strategy, *sliders]
        message.submit(send, inputs, [message, shown, history, notice])
        send_button.click(send, inputs, [message, shown, history, notice])
        reset_button.click(lambda: ("", [], [], "(history cleared)"), None, [message, shown, history, notice])
        shown.clear(lambda: ([], "(history cleared)"), None, [history, notice])
        load_button.click(load, [folder_box, folder], [folder, shown, history, notice])
    return page


def arena_page(gr, args: AppArguments):
    votes_path = Path(args.votes)
    draw = random.Random(args.seed)
    buttons_off = [gr.Button(interactive=False)] * len(VOTES)

    def send(message, system, strategy, *values):
        settings = slider_settings(values)
        models = draw.sample(args.arena, 2)
        try:
            chats = [new_chat(folder, system, strategy, settings, []) for folder in models]
            prompts = [turn_prompt(chat, message)[0] for chat in chats]
        except PipelineError as err:
            yield message, [], [], None, f"error: {err}", *buttons_off
            return
        shown = [[{"role": "user", "content": message}, {"role": "assistant", "content": ""}] for _ in models]
        replies = []
        for side, (chat, prompt_ids) in enumerate(zip(chats, prompts)):
            for text in stream_reply(chat, prompt_ids, strategy):
                shown[side] = [shown[side][0], {"role": "assistant", "content": text}]
                yield "", *shown, None, "", *buttons_off
            replies.append(text)
        prompt = ([{"role": "system", "content": chats[0].system}] if chats[0].system else []) + [
            {"role": "user", "content": message}]
        round_ = {"models": models, "replies": replies, "prompt": prompt, "decoding": decoding_record(strategy, chats[0].config)}
        yield "", *shown, round_, "Which reply is better?", *[gr.Button(interactive=True)] * len(VOTES)

    def vote(choice, round_):
        if round_ is None:
            return None, "error: send a message first; there is no pair of replies to vote on", gr.skip(), \
                *buttons_off
        append_vote(votes_path, vote_row(round_, choice))
        (model_a, model_b) = round_["models"]
        reveal = (f"You voted **{VOTES[choice]}**. A was **{model_a}**, B was **{model_b}**. "
                  f"Saved to {votes_path}; send another message for a new pair.")
        return None, reveal, tally_table(read_votes(votes_path)), *buttons_off

    with gr.Blocks(title="minichatgpt arena") as page:
        round_state = gr.State(None)
        gr.Markdown("## minichatgpt arena\nTwo unnamed models answer each message; vote for the better reply.")
        with gr.Row():
            shown_a = gr.Chatbot(label="Model A", elem_id="reply-a", height=300, **CHATBOT)
            shown_b = gr.Chatbot(label="Model B", elem_id="reply-b", height=300, **CHATBOT)
        message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, elem_id="message")
        send_button = gr.Button("Send", variant="primary", elem_id="send")
        with gr.Row():
            vote_buttons = [gr.Button(label, interactive=False, elem_id=f"vote-{key}") for key, label in VOTES.items()]
        notice = gr.Markdown(elem_id="notice")
        with gr.Accordion("Decoding settings (the same for both models)", open=False):
            system, strategy, sliders = decoding_controls(gr, args, args.arena[0])
        gr.Markdown("### Tally")
        tally = gr.Markdown(elem_id="tally")
        outputs = [message, shown_a, shown_b, round_state, notice, *vote_buttons]
        message.submit(send, [message, system, strategy, *sliders], outputs)
        send_button.click(send, [message, system, strategy, *sliders], outputs)
        for key, button in zip(VOTES, vote_buttons):
            button.click(functools.partial(vote, key), [round_state], [round_state, notice, tally, *vote_buttons])
        page.load(lambda: tally_table(read_votes(votes_path)), None, tally)
    return page


def serve(args: AppArguments):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    page = arena_page(gr, args) if args.arena else chat_page(gr, args)
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        page.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True,
                            ssr_mode=False, quiet=True)
    except OSError as err:
        raise PipelineError(f"cannot serve on {args.host}:{args.port} ({err}); choose another --port") from None


def check_arguments(args: AppArguments):
    modes = [name for name in ("model", "arena", "tally") if getattr(args, name)]
    if len(modes) != 1:
        raise PipelineError("give exactly one of --model FOLDER, --arena FOLDER FOLDER [...] or --tally FILE")
    if args.arena and len(set(args.arena)) < 2:
        raise PipelineError(f"--arena needs at least two different model folders, got {args.arena}")


def main():
    (args,) = HfArgumentParser(AppArguments).parse_args_into_dataclasses()
    try:
        check_arguments(args)
        if args.tally:
            if not Path(args.tally).is_file():
                raise PipelineError(f"{args.tally}: vote file not found")
            print(tally_table(read_votes(Path(args.tally))))
            return
        set_seed(args.seed)
        for folder in args.arena or [args.model]:
            load_chat_model(folder)
        serve(args)
    except PipelineError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
