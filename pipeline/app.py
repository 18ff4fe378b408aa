"""Chat with a model of the hub in the browser, or let people compare models, or rank the SFT model's sampled
replies, and keep their votes and judgements as reward-model data.

    python pipeline/app.py --model hub/quickstart-ppo
    python pipeline/app.py --arena hub/quickstart-sft hub/quickstart-ppo --votes votes/quickstart.jsonl
    python pipeline/app.py --tally votes/quickstart.jsonl
    python pipeline/app.py --label runs/quickstart/comparisons/train.jsonl --labels labels/quickstart.jsonl

The page is served on 127.0.0.1 (--host to change, --port for the port), never through a share link. The chat page
loads the models of --model's hub folder (by name) and nothing else from the server's disk. In the arena,
each prompt is answered by two of the models, drawn at random and shown unnamed as A and B; the person votes A, B,
tie or both bad, and then sees which model was which. Each vote is appended to --votes as one JSON line in TRL's
preference format (prompt, chosen and rejected as message lists) plus the models, the decoding settings and the time;
the reward stage reads that file through `data.preference_sources`. A tie or a both-bad vote is kept in the file with
both replies (reply_a, reply_b) but makes no training pair: neither reply is known to be the better one.

The labeling page loads no model: it shows the prompts of a comparisons file (the reward stage's replies sampled from
the SFT model) one at a time, the replies shuffled and unnamed, without the AI labeler's scores; the person ranks them
(ties allowed) or, with --label_mode score, scores them 1-5, or skips the prompt, and each judgement is appended to
--labels (minichatgpt/feedback/labels.py has its format). Prompts with a line there already are not shown again, so a restarted
page goes on where it stopped.
"""

import functools
import os
import random
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TextIteratorStreamer, set_seed

from minichatgpt.chat import DECODING_FIELDS, STREAMED_STRATEGIES, Chat, check_decoding, decoding_config, reply
from minichatgpt.errors import PipelineError
from minichatgpt.feedback.comparisons import read_comparisons
from minichatgpt.feedback.labels import (
    LABEL_MODES,
    SCORES,
    append_label,
    display_order,
    judgement_row,
    person_scores,
    progress,
    read_labels,
    skipped_row,
)
from minichatgpt.feedback.votes import VOTES, append_vote, read_votes, tally_table, vote_row
from minichatgpt.generation import STRATEGIES
from minichatgpt.serving import load_chat_model, served_folder

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
    label: str | None = field(
        default=None, metadata={"help": "Comparisons file whose replies people rank or score (labeling mode)."}
    )
    labels: str = field(default="labels/labels.jsonl", metadata={"help": "Judgements are appended to this file."})
    label_mode: str = field(
        default="rank", metadata={"help": "rank: rank the replies, 1 = best; score: score each 1-5, 5 = best.",
                                  "choices": LABEL_MODES}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 opens it to the network)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    system: str | None = field(default=None, metadata={"help": "Initial system prompt."})
    strategy: str = field(default="sample", metadata={"help": "Initial decoding strategy.", "choices": STRATEGIES})
    seed: int = field(default=0, metadata={"help": "Seed for sampling and for drawing arena pairs."})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks."})


def new_chat(folder: str, system: str, strategy: str, settings: dict, history: list[dict]) -> Chat:
    model, tokenizer = load_chat_model(folder)
    config = decoding_config(model.generation_config, strategy, **settings)
    check_decoding(config, model.config.max_position_embeddings)
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
            chosen = served_folder(folder_text, Path(args.model).parent, [args.model])
            load_chat_model(chosen)
        except PipelineError as err:
            return folder, [], [], f"error: {err} (still chatting with {folder})"
        return str(chosen), [], [], f"chatting with {chosen}; history cleared"

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
                folder_box = gr.Textbox(value=args.model, label="Model (a name in the hub folder)", elem_id="model")
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
        # The revisions the replies came from: a model retrained under the same name is another model to vote on.
        round_ = {"models": models, "revisions": [Path(chat.model.name_or_path).name for chat in chats],
                  "replies": replies, "prompt": prompt, "decoding": decoding_record(strategy, chats[0].config)}
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


def label_page(gr, args: AppArguments):
    comparisons = read_comparisons(Path(args.label))
    labels_path = Path(args.labels)
    slots = max(len(row["replies"]) for row in comparisons)
    instructions = {"rank": "Rank the replies: 1 for the best; replies as good as each other get the same rank.",
                    "score": "Score each reply from 1 (bad) to 5 (best); replies may get the same score."}

    def reply_slots(comparison: dict | None) -> list:
        """The comparison's replies in display order, each with its choices, and the slots it does not fill hidden."""
        shown = [comparison["replies"][i] for i in display_order(comparison, args.seed)] if comparison else []
        choices = list(range(1, len(shown) + 1)) if args.label_mode == "rank" else list(SCORES)
        unused = slots - len(shown)
        boxes = [gr.Textbox(value=text, visible=True) for text in shown] + [gr.Textbox(visible=False)] * unused
        radios = [gr.Radio(choices, value=None, visible=True) for _ in shown] + [gr.Radio(visible=False)] * unused
        return boxes + radios

    def show_next(notice: str) -> list:
        """The first prompt without a line in the labels file, or the news that none is left."""
        labels = read_labels(labels_path)
        index = next((i for i, row in enumerate(comparisons) if row["id"] not in labels), None)
        comparison = None if index is None else comparisons[index]
        if comparison is None:
            notice += f" Nothing left to label: every prompt of `{args.label}` has a line in `{labels_path}`."
        # One "role: text" line per message: a chat view would hide the system prompt, which the replies answer too.
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in comparison["prompt"]) if comparison else ""
        return [index, prompt, progress(comparisons, labels), notice.strip(),
                *[gr.Button(interactive=comparison is not None)] * 2, *reply_slots(comparison)]

    def save(row: dict, done: str) -> list:
        if append_label(labels_path, row):
            return show_next(done)
        return show_next("That prompt had a line already (judged in another tab?); not saved again.")

    def submit(index, *shown_choices):
        comparison = comparisons[index]
        try:
            scores = person_scores(list(shown_choices[:len(comparison["replies"])]),
                                   display_order(comparison, args.seed), args.label_mode)
        except PipelineError as err:
            return {notice: f"error: {err}"}
        return save(judgement_row(comparison, scores, args.label_mode), f"Saved to `{labels_path}`.")

    with gr.Blocks(title="minichatgpt labeling") as page:
        index_state = gr.State(None)
        gr.Markdown(f"## minichatgpt labeling\n{instructions[args.label_mode]} The replies are in random order.")
        progress_line = gr.Markdown(elem_id="progress")
        conversation = gr.Textbox(label="Conversation so far", interactive=False, lines=3, max_lines=20,
                                  elem_id="conversation")
        boxes, radios = [], []
        for number in range(1, slots + 1):
            with gr.Row():
                boxes.append(gr.Textbox(label=f"Reply {number}", interactive=False, visible=False, lines=2,
                                        scale=3, elem_id=f"reply-{number}"))
                radios.append(gr.Radio(label=f"{args.label_mode.capitalize()} of reply {number}", visible=False,
                                       scale=2, elem_id=f"choice-{number}"))
        # Enabled once the page has loaded its prompt: there is nothing to submit or skip before.
        with gr.Row():
            submit_button = gr.Button("Submit", variant="primary", interactive=False, elem_id="submit")
            skip_button = gr.Button("Skip", interactive=False, elem_id="skip")
        notice = gr.Markdown(elem_id="notice")
        outputs = [index_state, conversation, progress_line, notice, submit_button, skip_button, *boxes, *radios]
        submit_button.click(submit, [index_state, *radios], outputs)
        skip_button.click(lambda index: save(skipped_row(comparisons[index]), "Skipped."), [index_state], outputs)
        page.load(lambda: show_next(""), None, outputs)
    return page


def serve(args: AppArguments):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    if args.label:
        page = label_page(gr, args)
    else:
        page = arena_page(gr, args) if args.arena else chat_page(gr, args)
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        page.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True,
                            ssr_mode=False, quiet=True)
    except OSError as err:
        raise PipelineError(f"cannot serve on {args.host}:{args.port} ({err}); choose another --port") from None


def check_arguments(args: AppArguments):
    modes = [name for name in ("model", "arena", "tally", "label") if getattr(args, name)]
    if len(modes) != 1:
        raise PipelineError("give exactly one of --model FOLDER, --arena FOLDER FOLDER [...], --tally FILE or "
                            "--label FILE")
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
        if not args.label:
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
