"""Held out means held out: membership by content id, the same in every stage whatever sources a recipe mixes, and
samples of held-out prompts spread over the conversations."""

import json

from minichatgpt.arguments import DataArguments
from minichatgpt.data.preferences import preference_splits
from minichatgpt.data.sources import conversation_text
from minichatgpt.data.splits import (
    dialog_splits,
    held_out_draw,
    held_out_mask,
    load_dialogs,
    normalised,
    sample_pairs,
    text_splits,
)
from minichatgpt.training.rl import prompt_conversations


def conversation(i: int, turns: int = 6, prefix: str = "c") -> list[dict]:
    return [{"role": ("user", "assistant")[t % 2], "content": f"{prefix}{i} turn {t} talks about topic{prefix}{i}x{t}"}
            for t in range(turns)]


def write_dialogs(path, conversations):
    path.write_text("\n".join(json.dumps({"messages": m}) for m in conversations) + "\n", encoding="utf-8")
    return str(path)


def write_text(path, conversations, others: int = 30):
    """A text file whose paragraphs hold the conversations inside other words, in another layout and case."""
    paragraphs = [f"Once, someone wrote: {' '.join(t['content'] for t in m).upper()} and that was that."
                  for m in conversations]
    paragraphs += [f"an unrelated document number {i} about nothing in particular" for i in range(others)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return str(path)


def args(dialogs, texts, **kwargs):
    return DataArguments(dialog_sources=dialogs, text_sources=texts, **{"eval_fraction": 0.25, "max_eval_examples": 8,
                                                                          **kwargs})


def held_out_conversations(data_args) -> list[str]:
    """Every conversation whose draw holds it out, evaluated or not: what no stage may train on."""
    dialogs = load_dialogs(data_args)
    return [normalised(conversation_text(m)) for m, held in zip(dialogs["messages"],
                                                                 held_out_mask(dialogs["id"], data_args)) if held]


def assert_never_trained_on(data_args, held_out: list[str]):
    train_dialogs, eval_dialogs = dialog_splits(data_args)
    train_text, _ = text_splits(data_args)
    trained = [normalised(conversation_text(m)) for m in train_dialogs["messages"]]
    assert not set(held_out) & set(trained), "SFT trains on a held-out conversation"
    for document in train_text["text"]:
        assert not any(c in normalised(document) for c in held_out), "pretraining/tokenizer text holds one"
    train_pairs, _, _ = preference_splits(data_args, ["other_conversation", "truncated"], None, 3, 0, None, 100,
                                          dialogs=(train_dialogs, eval_dialogs))
    pairs = [normalised(" ".join(t["content"] for t in p + c)) for p, c in zip(train_pairs["prompt"],
                                                                                train_pairs["chosen"])]
    assert not any(p in c for p in pairs for c in held_out), "a reward pair comes from a held-out conversation"
    prompts = prompt_conversations(train_dialogs, 3, None, data_args.split_seed)
    assert prompts and not any(normalised(conversation_text(p)) in c for p in prompts for c in held_out), \
        "an RL prompt comes from a held-out conversation"


def test_a_recipe_mixing_text_and_dialog_sources_holds_out_the_same_conversations_everywhere(tmp_path):
    conversations = [conversation(i) for i in range(60)]
    data_args = args([write_dialogs(tmp_path / "d.jsonl", conversations)],
                     [write_text(tmp_path / "t.txt", conversations[::-1])])
    held_out = held_out_conversations(data_args)
    assert 5 <= len(held_out) <= 30
    assert_never_trained_on(data_args, held_out)
    # The evaluated set is the same in every stage and every call: the held-out draws with the lowest values.
    first, again = dialog_splits(data_args)[1], dialog_splits(data_args)[1]
    assert first["id"] == again["id"] and len(first) == data_args.max_eval_examples
    assert {normalised(conversation_text(m)) for m in first["messages"]} <= set(held_out)


def test_a_source_too_small_for_any_draw_below_the_fraction_holds_out_its_lowest_draw_everywhere(tmp_path):
    conversations = [conversation(i) for i in range(12)]
    data_args = args([write_dialogs(tmp_path / "d.jsonl", conversations)],
                     [write_text(tmp_path / "t.txt", conversations)], eval_fraction=0.001)
    ids = load_dialogs(data_args)["id"]
    assert not any(held_out_draw(i, data_args.split_seed) < data_args.eval_fraction for i in ids)
    held_out = held_out_conversations(data_args)
    assert len(held_out) == 1
    assert_never_trained_on(data_args, held_out)


def test_judgements_of_a_held_out_conversations_context_are_held_out_with_it(tmp_path):
    conversations = [conversation(i) for i in range(60)]
    votes = tmp_path / "votes.jsonl"
    votes.write_text("".join(json.dumps({"prompt": m[:3], "chosen": [{"role": "assistant", "content": "good reply"}],
                                         "rejected": [{"role": "assistant", "content": "bad"}]}) + "\n"
                             for m in conversations), encoding="utf-8")
    data_args = args([write_dialogs(tmp_path / "d.jsonl", conversations)], ["chitchat"],
                     preference_sources=[str(votes)], max_eval_examples=60)
    held_out = held_out_conversations(data_args)
    train, evaluated, _ = preference_splits(data_args, ["truncated"], None, 3, 0, None, 100)
    trained = [normalised(conversation_text(p)) for p in train["prompt"]]
    assert len(train) + len(evaluated) == 60 and len(evaluated) > len(held_out)  # and those a vote's own draw holds
    assert not any(p in c for p in trained for c in held_out), "the reward model trains on a held-out context"


def test_a_chat_text_source_holds_out_the_same_conversations_as_its_dialog_source(tmp_path):
    dialogs = write_dialogs(tmp_path / "d.jsonl", [conversation(i) for i in range(60)])
    data_args = args([dialogs], [f"chat:{dialogs}"])
    held_out = held_out_conversations(data_args)
    assert 5 <= len(held_out) <= 30
    assert_never_trained_on(data_args, held_out)
    train_text, _ = text_splits(data_args)
    assert len(train_text) == 60 - len(held_out), "the rest is pretraining text, in the chat template"
    assert all(document.startswith("<|user|>") for document in train_text["text"])


def test_adding_sources_keeps_every_held_out_conversation_held_out(tmp_path):
    conversations = [conversation(i) for i in range(60)]
    dialogs, text = write_dialogs(tmp_path / "d.jsonl", conversations), write_text(tmp_path / "t.txt", conversations)
    before = held_out_conversations(args([dialogs], ["chitchat"], max_documents_per_source=300))
    more = [conversation(i, prefix="m") for i in range(40)]
    bigger = args([write_dialogs(tmp_path / "more.jsonl", more), dialogs],
                  [text, write_text(tmp_path / "more.txt", more), "chitchat"], max_documents_per_source=300)
    assert set(before) <= set(held_out_conversations(bigger))
    assert_never_trained_on(bigger, before)


def test_exact_duplicates_are_dropped_within_and_across_sources_and_counted(tmp_path):
    conversations = [conversation(i) for i in range(10)]
    shouted = [[{**t, "content": "  " + t["content"].upper()} for t in m] for m in conversations[:3]]
    first = write_dialogs(tmp_path / "a.jsonl", conversations + conversations[:2])
    second = write_dialogs(tmp_path / "b.jsonl", shouted + [conversation(99)])
    reports = []
    dialogs = load_dialogs(DataArguments(dialog_sources=[first, second]), reports)
    assert len(dialogs) == 11 and len(set(dialogs["id"])) == 11
    assert [r.dropped["exact duplicates"] for r in reports] == [2, 3]
    assert "dropped 3 exact duplicates" in reports[1].summary()


def test_samples_of_prompts_spread_over_the_conversations():
    conversations = [conversation(i, turns=20) for i in range(50)]
    for n in (10, 50, 120):
        sampled = sample_pairs(conversations, 3, n, seed=0)
        assert len(sampled) == n
        assert len({index for index, _, _ in sampled}) >= min(n, 0.8 * len(conversations))
    assert len(sample_pairs(conversations, 3, None, seed=0)) == 50 * 10, "all pairs when there is no limit"
    assert sample_pairs(conversations, 3, 30, seed=1) != sample_pairs(conversations, 3, 30, seed=0)


def test_rl_and_ranking_prompts_spread_over_the_conversations():
    from datasets import Dataset

    from minichatgpt.evaluation.relevance import ranking_rows

    conversations = [conversation(i, turns=20) for i in range(40)]
    prompts = prompt_conversations(Dataset.from_dict({"messages": conversations}), 3, 32, seed=0)
    assert len({p[0]["content"].split()[0] for p in prompts}) >= min(32, 0.8 * 40)
    rows = ranking_rows(conversations, 3, max_contexts=30, seed=0)
    assert len({history[0]["content"].split()[0] for history, _ in rows}) >= min(30, 0.8 * 40)


def test_the_report_samples_prompts_over_the_held_out_conversations(smoke_run):
    report = json.loads((smoke_run["runs"] / "smoke" / "eval" / "report.json").read_text())
    held = report["held_out"]
    assert held["prompt_conversations"] >= min(held["prompts"], 0.8 * held["conversations"])
    for row in report["sft_vs_ppo"].values():
        assert "specificity_gain_se" in row and "win_rate_se" in row and "specificity_se" in row["sft"]
    assert report["reward_model"]["pairs"] > 0 and "accuracy_se" in report["reward_model"]
