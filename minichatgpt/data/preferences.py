"""Preference pairs for the reward model: TRL-format files, or pairs built from real dialogs, where the real reply
is chosen and a degraded or unrelated one rejected."""

import logging
import random
from collections import Counter
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from minichatgpt.data.files import CutShort, expand_paths, hub_dataset, read_records
from minichatgpt.data.sources import BadRows, conversation_text, validate_messages
from minichatgpt.data.splits import (
    content_id,
    dialog_splits,
    held_out_mask,
    load_dialogs,
    prompt_reply_pairs,
    split_eval,
    within_conversations,
)
from minichatgpt.errors import PipelineError
from minichatgpt.feedback.comparisons import labelled_splits, ranked_pairs

logger = logging.getLogger(__name__)

# Replies that fit any prompt, from one word to a sentence: a generic rejection as long as the real reply, so that
# length tells the reward model nothing (these are also what a small chat model says when it ignores the prompt).
GENERIC_REPLIES = ["", "ok", "lol", "hmm", "yes", "no", "what ?", "i don't know", "i'm not sure", "that's cool",
                   "yeah , i guess so", "i'm not sure what you mean", "that sounds good to me",
                   "i don't know , what do you think ?", "i think it would be a lot of the world",
                   "i'm not sure , i don't really know much about that",
                   "that's a good question , i don't really know what to say about that",
                   "i don't know , i think it depends on a lot of things , what about you ?"]
OTHER_REPLY_DRAWS = 8
# Arena votes (pipeline/app.py) that prefer neither reply: kept in the vote file, but they make no pair.
NO_PREFERENCE_VOTES = ("tie", "both_bad")
# `reward.labeler` for pairs built from the dialogs alone: a real reply against a synthetic corruption of it.
BUILT = "built"


def degrade(reply: str, kind: str, rng: random.Random, other_replies: list[tuple[int, str]],
            conversation: int = -1) -> str | None:
    """A worse reply than `reply`, made in the way `kind` names; None when `reply` is too short for that kind.
    `other_replies` are (conversation index, reply) pairs; an other_conversation reply comes from a conversation
    other than `conversation` and is the closest in length of a few drawn, so that length tells nothing."""
    words = reply.split()
    if kind == "other_conversation":
        candidates = [text for index, text in (rng.choice(other_replies) for _ in range(OTHER_REPLY_DRAWS))
                      if index != conversation and text.strip() and text != reply] if other_replies else []
        return min(candidates, key=lambda text: abs(len(text.split()) - len(words)), default=None)
    if kind == "truncated":
        if len(words) < 4:
            return None
        return " ".join(words[: rng.randint(1, max(1, len(words) // 2))])
    if kind == "shuffled":
        if len(words) < 4 or len(set(words)) < 3:
            return None
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        return " ".join(shuffled)
    if kind == "looped":
        phrase = " ".join(words[: rng.randint(1, min(3, len(words)))]) if words else "i"
        return " ".join([phrase] * rng.randint(4, 8))
    if kind == "generic":
        options = [g for g in GENERIC_REPLIES if g != reply.strip().lower()]
        rng.shuffle(options)
        return min(options, key=lambda text: abs(len(text.split()) - len(words)))
    raise PipelineError(f"reward.rejected_kinds: unknown kind '{kind}' (expected other_conversation, truncated, "
                        "shuffled, looped or generic)")


def build_preference_pairs(conversations, kinds: list[str], weights: list[float] | None, seed: int,
                           max_context_turns: int, max_pairs: int | None = None) -> Dataset:
    """Preference pairs from real dialogs: chosen is the real reply, rejected a degraded or unrelated one. A reply
    too short for the kind drawn gets another of the kinds (by weight) that applies to it."""
    if weights is not None and len(weights) != len(kinds):
        raise PipelineError(f"reward.rejected_weights has {len(weights)} values for {len(kinds)} rejected_kinds")
    weights = weights or [1.0] * len(kinds)
    if any(w < 0 for w in weights) or not any(weights):
        raise PipelineError(f"reward.rejected_weights {weights}: expected numbers >= 0, at least one above 0")
    rng = random.Random(seed)
    pairs = [(index, prompt, reply) for index, messages in enumerate(conversations)
             for prompt, reply in prompt_reply_pairs([messages], max_context_turns)]
    rng.shuffle(pairs)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    replies = [(index, reply) for index, _, reply in pairs]
    rows = {"prompt": [], "chosen": [], "rejected": [], "kind": []}
    for conversation, prompt, reply in pairs:
        untried = [i for i, weight in enumerate(weights) if weight > 0]
        while untried:
            pick = rng.choices(untried, weights=[weights[i] for i in untried])[0]
            rejected = degrade(reply, kinds[pick], rng, replies, conversation)
            if rejected is not None and rejected != reply:
                rows["prompt"].append(prompt)
                rows["chosen"].append([{"role": "assistant", "content": reply}])
                rows["rejected"].append([{"role": "assistant", "content": rejected}])
                rows["kind"].append(kinds[pick])
                break
            untried.remove(pick)
    if not rows["prompt"]:
        raise PipelineError("no preference pairs could be built from the dialog sources")
    logger.info(f"built {len(rows['prompt'])} preference pairs: {dict(Counter(rows['kind']))}")
    return Dataset.from_dict(rows)


def _as_messages(value, role: str):
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return value


def load_preferences(args) -> Dataset:
    """Preference files in TRL's format: {prompt, chosen, rejected} (explicit prompt) or {chosen, rejected}
    (implicit prompt: full conversations sharing a prefix); strings or message lists; or prompts whose replies a
    person scored or ranked on the labeling page {prompt, replies, scores}, every pair of them. Arena ties, both-bad
    votes and skipped prompts are skipped. A row's id is its prompt's, so that every pair of one prompt is on the same side of the split."""
    rows = {"id": [], "prompt": [], "chosen": [], "rejected": [], "kind": []}
    for source in args.preference_sources:
        bad = BadRows(source)
        kind, _, location = source.partition(":")
        records = ([(f"{source} row {i + 1}", r) for i, r in enumerate(hub_dataset(location))] if kind == "hub"
                   else [rec for path in expand_paths(source) for rec in read_records(path)])
        for where, row in records:
            if isinstance(row, dict) and (row.get("vote") in NO_PREFERENCE_VOTES or row.get("skipped")):
                continue
            if isinstance(row, CutShort):
                # The arena and the labeling page append one line per judgement: a crash loses that one, no more.
                logger.warning(f"{where}: skipped, {row}: a judgement lost to a crash while it was written")
                continue
            bad.total += 1
            if isinstance(row, Exception):
                bad.add(where, str(row))
                continue
            if isinstance(row, dict) and "replies" in row:
                problem = _add_judged_prompt(rows, row)
                if problem:
                    bad.add(where, problem)
                continue
            if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
                bad.add(where, "expected an object with 'chosen' and 'rejected'")
                continue
            chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
            if chosen == rejected:
                bad.add(where, "chosen and rejected are the same")
                continue
            if prompt is None:
                if not (isinstance(chosen, list) and isinstance(rejected, list)):
                    bad.add(where, "without a prompt, chosen and rejected must be message lists")
                    continue
                shared = 0
                while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
                    shared += 1
                prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
            prompt = _as_messages(prompt, "user")
            chosen, rejected = _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
            problem = next((p for p in (validate_messages(prompt + chosen), validate_messages(prompt + rejected)) if p),
                           None)
            if problem:
                bad.add(where, problem)
                continue
            rows["id"].append(content_id(conversation_text(prompt)))
            rows["prompt"].append(prompt)
            rows["chosen"].append(chosen)
            rows["rejected"].append(rejected)
            rows["kind"].append("human")
        bad.check(args.max_bad_fraction)
    if not rows["prompt"]:
        raise PipelineError(f"{args.preference_sources}: no usable preference rows")
    return Dataset.from_dict(rows)


def _add_judged_prompt(rows: dict, row: dict) -> str | None:
    """A prompt whose replies a person scored or ranked (the labeling page's line): every pair of its replies with
    different scores, the higher chosen; returns what is wrong with the row, if anything."""
    replies, scores, prompt = row.get("replies"), row.get("scores"), row.get("prompt")
    if not (isinstance(replies, list) and isinstance(scores, list) and len(replies) == len(scores) >= 2
            and isinstance(prompt, list) and all(isinstance(r, str) for r in replies)
            and all(isinstance(s, (int, float)) for s in scores)):
        return "expected 'prompt' (messages) and 'replies' and numeric 'scores' lists of the same length, at least 2"
    problem = validate_messages(prompt, need_assistant=False)
    if problem:
        return problem
    for chosen, rejected, _ in ranked_pairs(replies, scores, 0.0, Counter()):
        rows["id"].append(content_id(conversation_text(prompt)))
        rows["prompt"].append(prompt)
        rows["chosen"].append(_as_messages(chosen, "assistant"))
        rows["rejected"].append(_as_messages(rejected, "assistant"))
        rows["kind"].append("human")
    return None


def preference_splits(args, kinds: list[str], weights: list[float] | None, context_turns: int, seed: int,
                      max_pairs: int | None, eval_pairs: int, dialogs: tuple[Dataset, Dataset] | None = None,
                      built_per_preference: float = 0.0) -> tuple[Dataset, Dataset, str]:
    """Training and held-out preference pairs, and how they were made: the preference files when the recipe names
    some (with `built_per_preference` pairs built from the dialogs added to training per preference pair), else pairs
    built from each split of the dialogs (at most `eval_pairs` held-out pairs, with the data's split seed). `dialogs`
    is the (train, held-out) split of the dialogs when the caller has loaded it already."""
    if args.preference_sources:
        preferences, conversations = load_preferences(args), load_dialogs(args)
        # A judgement of a held-out conversation's context is held out with it, whatever its own draw.
        held_conversations = [m for m, held in zip(conversations["messages"], held_out_mask(conversations["id"], args))
                              if held]
        on_held_out = within_conversations(preferences["prompt"], held_conversations)
        train, held_out = (part.remove_columns("id") for part in split_eval(preferences, args, on_held_out))
        how = f"human preferences from {', '.join(args.preference_sources)}"
        return with_built_pairs(train, held_out, how, args, kinds, weights, context_turns, seed, max_pairs,
                                built_per_preference, dialogs)
    train_dialogs, eval_dialogs = dialogs or dialog_splits(args)
    train = build_preference_pairs(train_dialogs["messages"], kinds, weights, seed, context_turns, max_pairs)
    held_out = build_preference_pairs(eval_dialogs["messages"], kinds, weights, args.split_seed, context_turns,
                                      eval_pairs)
    how = (f"built from the training split of {', '.join(args.dialog_sources)}: chosen = the real reply, rejected = "
           f"one of {', '.join(kinds)} (weights {weights or 'equal'})")
    return train, held_out, how


def with_built_pairs(train: Dataset, held_out: Dataset, how: str, args, kinds, weights, context_turns: int,
                     seed: int, max_pairs: int | None, per_pair: float, dialogs=None) -> tuple[Dataset, Dataset, str]:
    """`per_pair` pairs built from the training dialogs added to the training pairs per pair there (with a margin of
    0 where the pairs have margins)."""
    wanted = round(per_pair * len(train))
    if not wanted:
        return train, held_out, how
    train_dialogs = (dialogs or dialog_splits(args))[0]
    built = build_preference_pairs(train_dialogs["messages"], kinds, weights, seed, context_turns,
                                   min(wanted, max_pairs or wanted))
    if "margin" in train.column_names:
        built = built.add_column("margin", [0.0] * len(built))
    train = concatenate_datasets([train, built.select_columns(train.column_names).cast(train.features)])
    return train, held_out, how + f", mixed with {len(built)} pairs built from {', '.join(args.dialog_sources)}"


def reward_pairs(recipe, data_args, reward_args, seed: int, dialogs=None, max_pairs: int | None = None
                 ) -> tuple[Dataset, Dataset, str]:
    """The reward model's training and held-out pairs as the recipe makes them, and how: the preference files when
    data.preference_sources names some (people's votes and labels); else with `reward.labeler: built`, pairs built
    from the dialogs; else the labeler's comparisons of the SFT model's own replies, which the reward stage collects
    under the run folder (minichatgpt/feedback/comparisons.py). The reward stage, DPO and the evaluation all read them here."""
    kinds, weights = reward_args.rejected_kinds, reward_args.rejected_weights
    turns, max_pairs = recipe.reward_context_turns(reward_args), max_pairs or reward_args.max_pairs
    if data_args.preference_sources or reward_args.labeler == BUILT:
        return preference_splits(data_args, kinds, weights, turns, seed, max_pairs, reward_args.eval_pairs, dialogs,
                                 reward_args.built_per_preference)
    train, held_out, how = labelled_splits(Path(recipe.output_dir("comparisons")), reward_args.tie_margin)
    return with_built_pairs(train, held_out, how, data_args, kinds, weights, turns, seed, max_pairs,
                            reward_args.built_per_preference, dialogs)
