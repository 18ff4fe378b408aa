"""The datasets every stage reads: the recipe's sources gathered and deduplicated, and split into training and
held-out rows by content identity, once for all stages.

Every document and conversation has an id, a hash of its normalised text, and a seeded draw from that id alone
decides whether it is held out (below `data.eval_fraction`). So a conversation held out of SFT is held out of the
reward pairs and the RL prompts, whatever sources the recipe mixes or adds; a text document is held out with every
held-out conversation it contains, so neither the tokenizer nor pretraining sees it. Exact duplicates are dropped.
(Reading each source, and what it loses, is in minichatgpt/data/sources.py; preference pairs in minichatgpt/data/preferences.py.)
"""

import hashlib
import logging
import random
import unicodedata
from collections import defaultdict

from datasets import Dataset

from minichatgpt.data.chat_format import ESCAPED_START, SPECIAL_START, SPECIAL_TOKEN
from minichatgpt.data.sources import BadRows, conversation_text, dialog_conversations, text_documents
from minichatgpt.errors import PipelineError

logger = logging.getLogger(__name__)


def data_card(reports: list[BadRows]) -> str:
    """The model card's account of its data: one line per source."""
    return "\n".join(f"- {report.summary()}" for report in reports)


# ---------------------------------------------------------------- identity


def normalised(text: str) -> str:
    """The text an id is made from: Unicode-normalised, case-folded, whitespace collapsed to single spaces, special
    tokens counted as whitespace, so that a conversation has one identity as dialog, as plain text and in the chat
    template (a `chat:` text source)."""
    text = SPECIAL_TOKEN.sub(" ", text.replace(ESCAPED_START, SPECIAL_START))
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_id(text: str) -> str:
    return hashlib.sha256(normalised(text).encode("utf-8")).hexdigest()[:24]


def held_out_draw(example_id: str, seed: int) -> float:
    """A number in [0, 1) that depends on the example's id and the split seed alone."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ConversationFinder:
    """Finds whether a text document contains any of some conversations (normalised text inside normalised text).

    Each conversation is looked up by its longest inner word, which is a whole word of any text containing the
    conversation, so that a document costs one set intersection; a conversation of fewer than three words is too
    short to be told apart inside a longer text, and only its own id holds it out."""

    def __init__(self, conversations: list[list[dict]]):
        self.by_word = defaultdict(list)
        for messages in conversations:
            text = normalised(conversation_text(messages))
            words = text.split(" ")
            if len(words) >= 3:
                self.by_word[max(words[1:-1], key=len)].append(text)

    def found_in(self, document: str) -> bool:
        text = normalised(document)
        return any(conversation in text for word in set(text.split(" ")).intersection(self.by_word)
                   for conversation in self.by_word[word])


# ---------------------------------------------------------------- gathering


def _gather(sources: list[str], read, args, setting: str, unit: str, empty: str, identity, reports: list | None
            ) -> tuple[list, list[str]]:
    """What `read(source, args, report)` gives for every source, without exact duplicates (within a source or
    across sources), capped per source, with each item's id (`identity(item)`) and one report per source (appended
    to `reports`); an empty source, or one that lost too much, is an error."""
    if not sources:
        raise PipelineError(f"data.{setting} is empty; name at least one source")
    items, ids, seen = [], [], set()
    for source in sources:
        report = BadRows(source, unit)
        found = read(source, args, report)
        report.check(args.max_bad_fraction)
        unique = []
        for item in found:
            item_id = identity(item)
            if item_id in seen:
                report.dropped["exact duplicates"] += 1
            else:
                seen.add(item_id)
                unique.append((item_id, item))
        kept = unique if args.max_documents_per_source is None else unique[: args.max_documents_per_source]
        report.capped = len(unique) - len(kept)
        report.keep([item for _, item in kept])
        if not kept:
            raise PipelineError(f"{source}: {empty}; {report.summary()}")
        logger.info(report.summary())
        if reports is not None:
            reports.append(report)
        ids.extend(item_id for item_id, _ in kept)
        items.extend(item for _, item in kept)
    return items, ids


def load_text(args, reports: list | None = None) -> Dataset:
    """All text sources as one dataset with `id` and `text` columns; `reports` gets what each source gave and lost."""
    documents, ids = _gather(args.text_sources, text_documents, args, "text_sources", "document",
                             "no text found (empty file or everything filtered out)", content_id, reports)
    return Dataset.from_dict({"id": ids, "text": documents})


def load_dialogs(args, reports: list | None = None) -> Dataset:
    """All dialog sources as one dataset with `id` and `messages` columns; `reports` gets what each source gave and
    lost."""
    conversations, ids = _gather(args.dialog_sources, dialog_conversations, args, "dialog_sources", "conversation",
                                 "no usable conversations (empty, every row was malformed, or none has a reply)",
                                 lambda messages: content_id(conversation_text(messages)), reports)
    return Dataset.from_dict({"id": ids, "messages": conversations})


# ---------------------------------------------------------------- splits


def held_out_mask(ids: list[str], args, also_held_out: list[bool] | None = None) -> list[bool]:
    """Which rows are held out: a draw below data.eval_fraction, or marked in `also_held_out`; when none is, the
    lowest draw (a dataset that small must still hold one out). The one rule every split and every check uses."""
    return _held_out(_draws(ids, args), args, also_held_out)


def _draws(ids: list[str], args) -> list[float]:
    return [held_out_draw(example_id, args.split_seed) for example_id in ids]


def _held_out(draws: list[float], args, also_held_out: list[bool] | None) -> list[bool]:
    held = [draw < args.eval_fraction or bool(also_held_out and also_held_out[i]) for i, draw in enumerate(draws)]
    if draws and not any(held):
        held[min(range(len(draws)), key=draws.__getitem__)] = True
    return held


def within_conversations(prompts: list[list[dict]], conversations: list[list[dict]]) -> list[bool]:
    """Whether each prompt's turns stand in one of the conversations, as whole words (a vote on a held-out
    conversation's context, say); a prompt of fewer than three words is too short to tell where it came from."""
    texts = f" {' | '.join(normalised(conversation_text(c)) for c in conversations)} "
    found = []
    for prompt in prompts:
        text = normalised(conversation_text(prompt))
        found.append(len(text.split(" ")) >= 3 and f" {text} " in texts)
    return found


def split_eval(dataset: Dataset, args, also_held_out: list[bool] | None = None) -> tuple[Dataset, Dataset]:
    """Training and held-out rows of a dataset with an `id` column, by each row's draw (`held_out_draw`): below
    data.eval_fraction, or marked in `also_held_out`, a row is held out. The held-out rows with the lowest draws, at
    most data.max_eval_examples, are the evaluation set; the others are held out of training but not evaluated, so
    that no cap or added source ever moves a row into training. A dataset so small that no draw falls below the
    fraction holds out its lowest draw."""
    if len(dataset) < 2:
        unit = (f" (text files give one document per {args.text_unit}, data.text_unit; set it to line for one "
                "document per line)" if "text" in dataset.column_names else "")
        raise PipelineError(f"only {len(dataset)} example(s): need at least 2 to hold one out for evaluation{unit}")
    draws = _draws(dataset["id"], args)
    held = _held_out(draws, args, also_held_out)
    if all(held):
        raise PipelineError(f"all {len(dataset)} examples are held out; lower data.eval_fraction "
                            f"({args.eval_fraction}) or add data")
    held_out = sorted((i for i, h in enumerate(held) if h), key=draws.__getitem__)
    evaluated = sorted(held_out[: args.max_eval_examples])
    if len(held_out) > len(evaluated):
        logger.info(f"held out {len(held_out)} of {len(dataset)} rows; evaluating {len(evaluated)} "
                    f"(data.max_eval_examples), the rest are used nowhere")
    return dataset.select([i for i, h in enumerate(held) if not h]), dataset.select(evaluated)


def dialog_splits(args, reports: list | None = None) -> tuple[Dataset, Dataset]:
    """The dialogs' training and held-out conversations."""
    return split_eval(load_dialogs(args, reports), args)


def text_splits(args, reports: list | None = None, dialogs: Dataset | None = None) -> tuple[Dataset, Dataset]:
    """The text's training and held-out documents: a document is held out by its own draw, and with every held-out
    dialog conversation it contains (a text source and a dialog source often hold the same conversations).
    `dialogs` is the recipe's `load_dialogs` when the caller has loaded them already."""
    text = load_text(args, reports)
    dialogs = dialogs if dialogs is not None else load_dialogs(args)
    held = held_out_mask(dialogs["id"], args)
    finder = ConversationFinder([messages for messages, h in zip(dialogs["messages"], held) if h])
    containing = [finder.found_in(document) for document in text["text"]]
    if any(containing):
        logger.info(f"{sum(containing)} text documents hold a held-out conversation and are held out with it")
    return split_eval(text, args, containing)


# ---------------------------------------------------------------- conversations


def conversation_windows(messages: list[dict], max_turns: int, turn_tokens: list[int] | None = None,
                         max_tokens: int | None = None) -> list[list[dict]]:
    """Cut a long conversation into windows of at most `max_turns` turns, each starting at a user turn and ending
    at an assistant turn; a leading system turn is repeated in every window. With `turn_tokens` (each turn's
    rendered length) and `max_tokens`, a window also fits in that many tokens, and an exchange too long for it even
    alone is left out, so that nothing is truncated."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns, lengths = messages[len(system):], (turn_tokens or [0] * len(messages))[len(system):]
    budget = (max_tokens if max_tokens is not None else float("inf")) - sum(turn_tokens[: len(system)] if turn_tokens else [])
    windows, start = [], 0
    while start < len(turns):
        while start < len(turns) and turns[start]["role"] != "user":
            start += 1
        end, used = start, 0
        while end < min(start + max_turns, len(turns)) and used + lengths[end] <= budget:
            used += lengths[end]
            end += 1
        while end > start and turns[end - 1]["role"] != "assistant":
            end -= 1
        if end > start:
            windows.append(system + turns[start:end])
            start = end
        else:
            start += 1
    return windows


def prompt_reply_pairs(conversations, max_context_turns: int) -> list[tuple[list[dict], str]]:
    """(history ending at a user turn, the real assistant reply) for every assistant turn that follows a user."""
    pairs = []
    for messages in conversations:
        for i, turn in enumerate(messages):
            if turn["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user" and turn["content"].strip():
                pairs.append((messages[max(0, i - max_context_turns):i], turn["content"]))
    return pairs


def sample_pairs(conversations, max_context_turns: int, limit: int | None, seed: int
                 ) -> list[tuple[int, list[dict], str]]:
    """(conversation index, history, real reply) pairs spread over the conversations: the conversations in a seeded
    order give one pair each (their pairs in a seeded order too), then a second each, and so on, until `limit`
    pairs (every pair when None). Any first n pairs come from min(n, conversations) conversations, where the first n
    in conversation order would come from a handful."""
    rng = random.Random(seed)
    per_conversation = [prompt_reply_pairs([messages], max_context_turns) for messages in conversations]
    for pairs in per_conversation:
        rng.shuffle(pairs)
    order = [i for i in range(len(per_conversation)) if per_conversation[i]]
    rng.shuffle(order)
    sampled = []
    for depth in range(max((len(pairs) for pairs in per_conversation), default=0)):
        for index in order:
            if depth < len(per_conversation[index]):
                sampled.append((index, *per_conversation[index][depth]))
                if limit is not None and len(sampled) >= limit:
                    return sampled
    return sampled
