"""The web chat, arena and labeling page (pipeline/app.py) driven in a real headless Chromium, and the vote and label
files the reward stage reads. The browser is Debian's /usr/bin/chromium (Playwright never downloads one); without it
the browser tests skip, except in CI, where they must run."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write_jsonl
from playwright.sync_api import expect, sync_playwright
from transformers import AutoModelForCausalLM, AutoTokenizer

from minichatgpt.arguments import DataArguments
from minichatgpt.chat import Chat, decoding_config
from minichatgpt.data.preferences import load_preferences, preference_splits
from minichatgpt.errors import PipelineError
from minichatgpt.feedback.comparisons import read_comparisons
from minichatgpt.feedback.labels import (
    append_label,
    display_order,
    judgement_row,
    person_scores,
    progress,
    read_labels,
    skipped_row,
)
from minichatgpt.feedback.votes import append_vote, read_votes, tally_table, vote_row
from minichatgpt.serving import LOADED_MODELS, _load_revision, load_chat_model, served_folder

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPLY_WAIT_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(log: Path, *args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "pipeline/app.py", *map(str, args), "--port", str(port)], cwd=ROOT,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}/"


def wait_until_serving(process: subprocess.Popen, url: str, log: Path, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"the app did not serve {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; CI must run the browser tests (apt-get install chromium)")
        pytest.skip(f"the browser tests need Debian's chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def apps(smoke_run, browser, tmp_path_factory):
    """The chat app on the smoke PPO model and the arena on the smoke SFT and PPO models, started side by side."""
    root = tmp_path_factory.mktemp("app")
    hub = smoke_run["hub"]
    votes = root / "votes" / "arena.jsonl"
    started = {"chat": start_app(root / "chat.log", "--model", hub / "smoke-ppo"),
               "arena": start_app(root / "arena.log", "--arena", hub / "smoke-sft", hub / "smoke-ppo",
                                  "--votes", votes)}
    try:
        for name, (process, url) in started.items():
            wait_until_serving(process, url, root / f"{name}.log")
        yield {"chat": started["chat"][1], "arena": started["arena"][1], "votes": votes, "hub": hub}
    finally:
        for process, _ in started.values():
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def ppo_model(smoke_run):
    folder = smoke_run["hub"] / "smoke-ppo"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def greedy_replies(model_and_tokenizer, messages: list[str], max_new_tokens: int) -> list[str]:
    """What pipeline/chat.py answers to `messages`, one turn after the other, with greedy decoding."""
    model, tokenizer = model_and_tokenizer
    config = decoding_config(model.generation_config, "greedy", max_new_tokens=max_new_tokens)
    chat = Chat(model, tokenizer, config, None, plain=False)
    return [chat.say(text)[0] for text in messages]


def words(text: str) -> str:
    return " ".join(text.split())


def send(page, text: str):
    page.locator("#message textarea").fill(text)
    page.locator("#message textarea").press("Enter")


def use_greedy(page, max_new_tokens: int):
    page.locator("#strategy").get_by_label("greedy").check()
    tokens = page.locator("#max_new_tokens input[type=number]")
    tokens.fill(str(max_new_tokens))
    tokens.press("Enter")


def wait_for_reply(page, index: int, expected: str):
    """Waits until the `index`-th reply on the page reads `expected` and returns every text it showed meanwhile."""
    replies = page.locator("#conversation .bot")
    expect(replies.nth(index)).to_have_text(expected, timeout=REPLY_WAIT_MS, use_inner_text=True)
    return page.evaluate("window.shownReplies || []")


def watch_replies(page):
    """Records every text the last reply shows, to see it grow token by token."""
    page.evaluate("""() => {
        window.shownReplies = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll('#conversation .bot');
            if (replies.length) window.shownReplies.push(replies[replies.length - 1].innerText);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")


def test_chat_streams_the_reply_with_the_chosen_decoding(apps, browser, ppo_model):
    page = browser.new_page()
    page.goto(apps["chat"])
    use_greedy(page, max_new_tokens=24)
    watch_replies(page)
    (expected,) = greedy_replies(ppo_model, ["how are you ?"], max_new_tokens=24)
    send(page, "how are you ?")
    shown = wait_for_reply(page, 0, words(expected))
    growing = {words(text) for text in shown if text.strip() and words(expected).startswith(words(text))}
    assert len(growing) >= 3, f"the reply did not stream: {shown}"
    assert page.locator("#message textarea").input_value() == ""
    page.close()


def test_two_tabs_keep_their_own_history_and_reset_clears_it(apps, browser, ppo_model):
    first, second = browser.new_page(), browser.new_page()
    for page in (first, second):
        page.goto(apps["chat"])
        use_greedy(page, max_new_tokens=16)
    two_turns = greedy_replies(ppo_model, ["my name is bob", "what is my name ?"], max_new_tokens=16)
    (one_turn,) = greedy_replies(ppo_model, ["what is my name ?"], max_new_tokens=16)
    assert two_turns[1] != one_turn, "the smoke model answers the same with and without history; pick other prompts"

    send(first, "my name is bob")
    wait_for_reply(first, 0, words(two_turns[0]))
    send(second, "what is my name ?")
    wait_for_reply(second, 0, words(one_turn))
    send(first, "what is my name ?")
    wait_for_reply(first, 1, words(two_turns[1]))
    expect(second.locator("#conversation .bot")).to_have_count(1)

    first.locator("#reset").click()
    expect(first.locator("#notice")).to_contain_text("history cleared")
    expect(first.locator("#conversation .bot")).to_have_count(0)
    send(first, "what is my name ?")
    wait_for_reply(first, 0, words(one_turn))
    first.close()
    second.close()


def test_bad_input_gets_a_message_on_the_page_and_the_server_keeps_running(apps, browser):
    page = browser.new_page()
    page.goto(apps["chat"])
    notice = page.locator("#notice")
    page.locator("#send").click()
    expect(notice).to_contain_text("error: the message is empty")
    send(page, "tell me a long story " * 60)
    expect(notice).to_contain_text("error: the message (with the system prompt) is")
    expect(notice).to_contain_text("128-token context")
    for folder, problem in ((apps["hub"] / "missing-ppo", "is not a model this page serves"),
                            ("/etc", "is not a model this page serves; load one of:"),
                            (apps["hub"] / "smoke-base", "not a chat model")):
        page.locator("#model textarea").fill(str(folder))
        page.locator("#load").click()
        expect(notice).to_contain_text(problem)
        expect(notice).to_contain_text("still chatting with")
    send(page, "hi")
    expect(page.locator("#conversation .bot")).to_have_count(1, timeout=REPLY_WAIT_MS)
    expect(page.locator("#conversation .bot")).not_to_have_text("", timeout=REPLY_WAIT_MS)
    page.close()


def arena_round(page, message: str) -> tuple[str, str]:
    send(page, message)
    expect(page.locator("#vote-A")).to_be_enabled(timeout=REPLY_WAIT_MS)
    return tuple(words(page.locator(f"#reply-{side} .bot").inner_text()) for side in "ab")


def test_arena_votes_become_preference_pairs_the_reward_stage_reads(apps, browser):
    page = browser.new_page()
    page.goto(apps["arena"])
    expect(page.locator("#tally")).to_contain_text("No votes yet")
    reply_a, reply_b = arena_round(page, "what do you do for fun ?")
    assert "smoke-" not in page.locator("body").inner_text(), "the models must stay unnamed until the vote"
    page.locator("#vote-A").click()
    expect(page.locator("#notice")).to_contain_text("A was")
    expect(page.locator("#vote-A")).to_be_disabled()

    (row,) = [json.loads(line) for line in apps["votes"].read_text().splitlines()]
    assert row["prompt"] == [{"role": "user", "content": "what do you do for fun ?"}]
    assert words(row["chosen"][0]["content"]) == reply_a and words(row["rejected"][0]["content"]) == reply_b
    assert row["chosen_model"] == row["model_a"] != row["model_b"] == row["rejected_model"]
    assert row["decoding"]["strategy"] == "sample" and row["time"]
    assert f"A was {row['model_a']}, B was {row['model_b']}" in page.locator("#notice").inner_text()
    expect(page.locator("#tally")).to_contain_text("100%")

    arena_round(page, "do you like movies ?")
    page.locator("#vote-tie").click()
    expect(page.locator("#notice")).to_contain_text("You voted Tie")
    page.close()

    tie = json.loads(apps["votes"].read_text().splitlines()[1])
    assert tie["vote"] == "tie" and "chosen" not in tie and tie["reply_a"] and tie["reply_b"]
    pairs = load_preferences(DataArguments(preference_sources=[str(apps["votes"])]))
    assert len(pairs) == 1 and pairs["chosen"][0] == row["chosen"] and pairs["kind"] == ["human"]

    tally = run_cli(["pipeline/app.py", "--tally", apps["votes"]], check=True).stdout
    # Each model with the hub revision that replied: a model retrained under its name is counted apart.
    assert {row["revision_a"], row["revision_b"]} == {
        Path(os.path.realpath(apps["hub"] / name)).name for name in ("smoke-sft", "smoke-ppo")}
    first, second = sorted((f"{row['model_a']} @ {row['revision_a']}", f"{row['model_b']} @ {row['revision_b']}"))
    winner_is_first = first.startswith(row["chosen_model"] + " @")
    assert f"| {first} | {second} | {int(winner_is_first)} | {int(not winner_is_first)} | 1 | 0 | 2 |" in tally


def rounds(count: int) -> list[dict]:
    return [{"models": ["hub/x-sft", "hub/x-ppo"], "replies": [f"reply {i}", f"other reply {i}"],
             "prompt": [{"role": "user", "content": f"question {i}"}], "decoding": {"strategy": "sample"}}
            for i in range(count)]


def test_a_vote_cut_short_by_a_crash_does_not_spoil_the_next(tmp_path):
    path = tmp_path / "votes.jsonl"
    first, second = rounds(2)
    append_vote(path, vote_row(first, "B"))
    with path.open("a") as file:
        file.write('{"prompt": [{"role": "user", "content": "cut sh')
    append_vote(path, vote_row(second, "A"))
    assert [row["vote"] for row in read_votes(path)] == ["B", "A"]
    assert json.loads(path.read_text().splitlines()[-1])["chosen"] == [{"role": "assistant", "content": "reply 1"}]


def test_a_vote_cut_mid_character_loses_that_vote_only_even_among_few(tmp_path):
    path = tmp_path / "votes.jsonl"
    first, second, third = rounds(3)
    append_vote(path, vote_row(first, "A"))
    with path.open("ab") as file:  # a crash inside "café": the last byte of "é" never reached the disk
        file.write('{"prompt": [{"role": "user", "content": "caf\u00e9'.encode()[:-1])
    append_vote(path, vote_row(second, "B"))
    append_vote(path, vote_row(third, "A"))
    assert [row["vote"] for row in read_votes(path)] == ["A", "B", "A"]
    assert "| 3 |" in tally_table(read_votes(path))
    # One lost line in four is over data.max_bad_fraction (0.1) as a bad row, but it is no bad row: a lost one.
    pairs = load_preferences(DataArguments(preference_sources=[str(path)]))
    assert pairs["chosen"] == [[{"role": "assistant", "content": f"reply {i}"}] for i in (0,)] + [
        [{"role": "assistant", "content": "other reply 1"}], [{"role": "assistant", "content": "reply 2"}]]


def test_votes_record_the_revisions_and_the_tally_counts_a_retrained_model_apart():
    old, new = rounds(2)
    old["revisions"] = ["20261201-100000-000000", "20261201-110000-000000"]
    new["revisions"] = ["20261201-100000-000000", "20261207-090000-000000"]
    votes = [vote_row(old, "B"), vote_row(new, "A")]
    assert (votes[0]["revision_a"], votes[0]["revision_b"]) == tuple(old["revisions"])
    table = tally_table(votes)
    assert "| hub/x-ppo @ 20261201-110000-000000 | hub/x-sft @ 20261201-100000-000000 | 1 | 0 |" in table
    assert "| hub/x-ppo @ 20261207-090000-000000 | hub/x-sft @ 20261201-100000-000000 | 0 | 1 |" in table


def test_tally_counts_each_pair_and_its_win_rate():
    votes = [vote_row(round_, vote) for round_, vote in zip(rounds(6), ["A", "A", "B", "tie", "both_bad", "A"])]
    # A is hub/x-sft in every round: it won 3 votes, hub/x-ppo 1; the pair is listed in name order.
    assert "| hub/x-ppo | hub/x-sft | 1 | 3 | 1 | 1 | 6 | 25% |" in tally_table(votes)
    assert tally_table([]) == "No votes yet."


def test_preference_files_mix_with_built_pairs(tmp_path):
    path = tmp_path / "votes.jsonl"
    for round_, vote in zip(rounds(40), ["A", "B", "tie", "both_bad"] * 10):
        append_vote(path, vote_row(round_, vote))
    args = DataArguments(preference_sources=[str(path)], dialog_sources=["chitchat"], max_documents_per_source=100,
                         eval_fraction=0.1)
    kinds = ["truncated", "generic"]
    only_human, held_out, _ = preference_splits(args, kinds, None, 2, 0, None, 50)
    mixed, mixed_held_out, how = preference_splits(args, kinds, None, 2, 0, None, 50, built_per_preference=2)
    assert len(only_human) + len(held_out) == 20 and set(only_human["kind"]) == {"human"}
    assert len(mixed) == 3 * len(only_human) and mixed_held_out["prompt"] == held_out["prompt"]
    assert set(mixed["kind"]) == {"human", "truncated", "generic"} and "mixed with" in how


def comparisons() -> list[dict]:
    """Two prompts of the reward stage's comparisons file, each with three replies sampled from the SFT model."""
    made_by = {"labeler": "all-mpnet-base-v2", "model": "hub/x-sft", "revision": "20261207-183000-123456"}
    return [{"id": "3f2a", "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                      {"role": "user", "content": "how are you ?"}],
             "replies": ["good , you ?", "i like dogs", "fine thanks"], "scores": [0.31, -0.02, 0.25]} | made_by,
            {"id": "9c1b", "prompt": [{"role": "user", "content": "do you like movies ?"}],
             "replies": ["yes , comedies", "no", "what is a movie"], "scores": [0.42, 0.05, -0.37]} | made_by]


@contextlib.contextmanager
def label_app(log: Path, *args):
    process, url = start_app(log, *args)
    try:
        wait_until_serving(process, url, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_people_label_replies_and_a_restarted_page_goes_on_where_it_stopped(browser, tmp_path):
    path = write_jsonl(tmp_path / "comparisons.jsonl", comparisons())
    labels = tmp_path / "labels" / "labels.jsonl"
    ranks = {"good , you ?": 1, "i like dogs": 3, "fine thanks": 1}
    with label_app(tmp_path / "label.log", "--label", path, "--labels", labels) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#reply-3 textarea")).not_to_have_value("")
        expect(page.locator("#conversation textarea")).to_have_value("user: hi\nassistant: hello\nuser: how are you ?")
        expect(page.locator("#progress")).to_contain_text("0 of 2 prompts labelled")
        shown = [page.locator(f"#reply-{number} textarea").input_value() for number in (1, 2, 3)]
        assert sorted(shown) == sorted(ranks)
        assert "0.31" not in page.locator("body").inner_text() and "all-mpnet" not in page.content()
        for number, text in enumerate(shown[:2], 1):
            page.locator(f"#choice-{number}").get_by_label(str(ranks[text]), exact=True).check()
        page.locator("#submit").click()
        expect(page.locator("#notice")).to_contain_text("error: rank every reply before submitting (missing: reply 3)")
        assert not labels.exists()
        page.locator("#choice-3").get_by_label(str(ranks[shown[2]]), exact=True).check()
        page.locator("#submit").click()
        expect(page.locator("#progress")).to_contain_text("1 of 2 prompts labelled")
        expect(page.locator("#conversation textarea")).to_have_value("user: do you like movies ?")
        expect(page.locator("#choice-1 input:checked")).to_have_count(0)
        page.locator("#skip").click()
        expect(page.locator("#notice")).to_contain_text("Nothing left to label")
        expect(page.locator("#progress")).to_contain_text("1 of 2 prompts labelled, 1 skipped")
        page.close()

    first, second = comparisons()
    judged, skipped = [json.loads(line) for line in labels.read_text().splitlines()]
    assert judged.pop("time") and skipped.pop("time")
    assert judged == {"id": "3f2a", "prompt": first["prompt"], "replies": first["replies"], "scores": [3, 1, 3],
                      "mode": "rank", "labeler": "person", "model": "hub/x-sft", "revision": "20261207-183000-123456"}
    assert skipped == {"id": "9c1b", "skipped": True, "labeler": "person", "model": "hub/x-sft",
                       "revision": "20261207-183000-123456"}

    with label_app(tmp_path / "again.log", "--label", path, "--labels", labels) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#notice")).to_contain_text("Nothing left to label")
        expect(page.locator("#submit")).to_be_disabled()
        page.close()
    assert len(labels.read_text().splitlines()) == 2


def test_label_rows_keep_the_file_order_of_the_replies_and_skip_lines_cut_short(tmp_path):
    first, second = comparisons()
    order = display_order(first, seed=0)
    assert sorted(order) == [0, 1, 2] and order == display_order(first, seed=0)
    assert any(display_order(first, seed) != [0, 1, 2] for seed in range(10)), "the replies are never shuffled"
    # The page shows reply `order[n]` of the file as its reply n + 1: the ranks and scores below are as shown.
    assert [person_scores([1, 3, 1], order, "rank")[i] for i in order] == [3, 1, 3]
    assert [person_scores([5, 2, 2], order, "score")[i] for i in order] == [5, 2, 2]
    with pytest.raises(PipelineError, match=r"score every reply before submitting \(missing: reply 2\)"):
        person_scores([4, None, 1], order, "score")

    path = tmp_path / "labels.jsonl"
    assert append_label(path, judgement_row(first, [3, 1, 3], "rank"))
    with path.open("a") as file:
        file.write('{"id": "9c1b", "skipp')
    assert progress([first, second], read_labels(path)) == "1 of 2 prompts labelled"
    assert append_label(path, skipped_row(second)) and not append_label(path, skipped_row(second))
    assert progress([first, second], read_labels(path)) == "1 of 2 prompts labelled, 1 skipped"
    assert read_labels(path)["3f2a"]["scores"] == [3, 1, 3]


def test_a_bad_comparisons_file_stops_the_label_page_with_one_line(tmp_path):
    first, second = comparisons()
    path = write_jsonl(tmp_path / "comparisons.jsonl", [first, second | {"replies": ["no"]}])
    result = run_cli(["pipeline/app.py", "--label", path])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: line 2: expected 'replies' to be a list of two or more strings")
    for rows, problem in (([first, "{cut"], "line 2: not JSON"), ([first, first], "line 2: expected a new id"),
                          ([first | {"scores": [1]}], "line 1: expected 'scores' to be a list of one score per reply"),
                          ([first | {"prompt": "hi"}], "line 1: expected 'prompt' to be a list of messages")):
        with pytest.raises(PipelineError, match=problem):
            read_comparisons(write_jsonl(path, rows))
    with pytest.raises(PipelineError, match="comparisons file not found"):
        read_comparisons(tmp_path / "missing.jsonl")


def test_the_chat_page_serves_the_hubs_models_by_name_and_loads_each_revision_once(smoke_run):
    hub = smoke_run["hub"]
    named = [str(hub / "smoke-ppo")]
    assert served_folder("smoke-sft", hub, named) == hub / "smoke-sft"
    assert served_folder(f" {hub}/./smoke-sft/ ", hub, named) == hub / "smoke-sft"
    for outside in ("/etc", str(hub / ".revisions"), str(hub / ".." / "runs"), "../../etc/passwd", "", "smoke"):
        with pytest.raises(PipelineError, match="is not a model this page serves; load one of: ") as refused:
            served_folder(outside, hub, named)
        assert str(refused.value).endswith(", ".join(sorted(str(p) for p in hub.iterdir() if p.name[0] != ".")))
    _load_revision.cache_clear()
    for spelling in (hub / "smoke-sft", f"{hub}/./smoke-sft", f"{hub}/smoke-sft/", hub / ".." / hub.name / "smoke-sft"):
        load_chat_model(spelling)
    assert _load_revision.cache_info().currsize == 1
    assert _load_revision.cache_info().maxsize == LOADED_MODELS


def test_a_missing_model_folder_stops_the_app_with_one_line(tmp_path):
    result = run_cli(["pipeline/app.py", "--model", tmp_path / "nothing-ppo"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nothing-ppo'}: folder not found")
