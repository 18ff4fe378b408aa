"""Preference pairs for the reward model: built from real dialogs by kind of rejected reply, or read from TRL-format
files."""

import random

import pytest
from conftest import write_jsonl

from minichatgpt.arguments import DataArguments
from minichatgpt.data.preferences import build_preference_pairs, degrade, load_preferences
from minichatgpt.data.splits import load_dialogs
from minichatgpt.errors import PipelineError


def data_args(**kwargs):
    return DataArguments(**kwargs)


def test_preference_pairs_from_dialogs_use_every_kind():
    dialogs = load_dialogs(data_args(dialog_sources=["chitchat"], max_documents_per_source=100))["messages"]
    kinds = ["other_conversation", "truncated", "shuffled", "looped", "generic"]
    pairs = build_preference_pairs(dialogs, kinds, None, seed=0, max_context_turns=3, max_pairs=500)
    assert set(pairs["kind"]) == set(kinds)
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        assert prompt[-1]["role"] == "user" and len(prompt) <= 3
        assert chosen != rejected
    only_looped = build_preference_pairs(dialogs, ["looped"], None, seed=0, max_context_turns=3, max_pairs=50)
    assert set(only_looped["kind"]) == {"looped"}


def test_replies_too_short_for_a_kind_get_another_kind_that_applies():
    conversations = [[{"role": "user", "content": f"question {i} ?"}, {"role": "assistant", "content": "sure"}]
                     for i in range(40)]
    pairs = build_preference_pairs(conversations, ["truncated", "shuffled", "generic"], [10.0, 10.0, 1.0], seed=0,
                                   max_context_turns=1)
    assert len(pairs) == 40 and set(pairs["kind"]) == {"generic"}
    with pytest.raises(PipelineError, match="no preference pairs"):
        build_preference_pairs(conversations, ["truncated", "generic"], [1.0, 0.0], seed=0, max_context_turns=1)
    with pytest.raises(PipelineError, match="rejected_weights"):
        build_preference_pairs(conversations, ["truncated", "generic"], [1.0, -1.0], seed=0, max_context_turns=1)


def test_other_conversation_replies_come_from_other_conversations_and_match_in_length():
    dialogs = load_dialogs(data_args(dialog_sources=["chitchat"], max_documents_per_source=300))["messages"]
    owners = {}
    for index, messages in enumerate(dialogs):
        for turn in messages:
            owners.setdefault(turn["content"], set()).add(index)
    pairs = build_preference_pairs(dialogs, ["other_conversation"], None, seed=0, max_context_turns=1)
    length_gaps, random_gaps = [], []
    rng = random.Random(0)
    for chosen, rejected in zip(pairs["chosen"], pairs["rejected"]):
        chosen, rejected = chosen[0]["content"], rejected[0]["content"]
        if len(owners[chosen]) == 1:
            assert owners[rejected] - owners[chosen]
        length_gaps.append(abs(len(chosen.split()) - len(rejected.split())))
        random_gaps.append(abs(len(chosen.split()) - len(rng.choice(pairs["rejected"])[0]["content"].split())))
    assert sum(length_gaps) < 0.5 * sum(random_gaps)


def test_degrade_kinds():
    rng = random.Random(0)
    reply = "i really like to go hiking in the mountains"
    assert len(degrade(reply, "truncated", rng, [])) < len(reply)
    shuffled = degrade(reply, "shuffled", rng, [])
    assert shuffled != reply and sorted(shuffled.split()) == sorted(reply.split())
    looped = degrade(reply, "looped", rng, []).split()
    assert len(looped) >= 4 and len(set(looped)) <= 3
    with pytest.raises(PipelineError, match="unknown kind"):
        degrade(reply, "bogus", rng, [])


def test_preference_files_explicit_and_implicit_prompt(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "how are you ?", "chosen": "good , you ?", "rejected": "banana"},
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello !"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]},
    ] * 5)
    prefs = load_preferences(data_args(preference_sources=[str(path)]))
    assert len(prefs) == 10
    assert prefs["prompt"][1] == [{"role": "user", "content": "hi"}]
    assert prefs["chosen"][1] == [{"role": "assistant", "content": "hello !"}]


def test_preference_rows_with_chosen_equal_rejected_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(PipelineError, match="chosen and rejected are the same"):
        load_preferences(data_args(preference_sources=[str(path)]))


def test_generic_rejections_are_about_as_long_as_the_real_reply():
    dialogs = load_dialogs(data_args(dialog_sources=["chitchat"], max_documents_per_source=300))["messages"]
    pairs = build_preference_pairs(dialogs, ["generic"], None, seed=0, max_context_turns=1, max_pairs=400)
    chosen = [len(c[0]["content"].split()) for c in pairs["chosen"]]
    rejected = [len(r[0]["content"].split()) for r in pairs["rejected"]]
    shorter = sum(r < c for c, r in zip(chosen, rejected)) / len(chosen)
    longer = sum(r > c for c, r in zip(chosen, rejected)) / len(chosen)
    assert shorter < 0.75 and longer > 0.1
    assert abs(sum(chosen) - sum(rejected)) / sum(chosen) < 0.35
