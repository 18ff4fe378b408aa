import json

import pytest
from conftest import (
    CORNELL,
    CORNELL_MINI,
    WIKITEXT,
    WIKITEXT_MINI,
    most_lines_missing,
    shared_corpus,
    write_cornell,
    write_jsonl,
)

from minichatgpt.arguments import DataArguments
from minichatgpt.data.files import read_text_file
from minichatgpt.data.sources import (
    CORNELL_SEPARATOR,
    BadRows,
    conversation_text,
    cornell_conversations,
    wikitext_articles,
)
from minichatgpt.data.splits import conversation_windows, load_dialogs, load_text, prompt_reply_pairs, split_eval
from minichatgpt.errors import PipelineError
from minichatgpt.hub import read_metadata


def data_args(**kwargs):
    return DataArguments(**kwargs)


@pytest.mark.parametrize("corpus, first_title, at_least", [
    ("repository", "= Harbour Lighthouse =", 3),
    ("shared", "= Robert Boulter =", 40),
])
def test_wikitext_articles_split_at_titles_and_keep_tokens(corpus, first_title, at_least):
    articles = wikitext_articles(read_text_file(WIKITEXT_MINI if corpus == "repository" else shared_corpus(WIKITEXT)))
    assert articles[0].startswith(first_title)
    assert all(a.startswith("= ") and not a.startswith("= =") for a in articles)
    assert len(articles) >= at_least
    assert any("@-@" in a for a in articles), "WikiText tokens like @-@ are kept as they are"
    assert "\r" not in articles[0]


def test_text_sources_mix_and_split_is_seeded(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n", encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "from json"}, {"text": "another"}])
    args = data_args(text_sources=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), f"wikitext:{WIKITEXT_MINI}"],
                     eval_fraction=0.1)
    dataset = load_text(args)
    assert dataset["text"][:4] == ["first paragraph", "second paragraph", "from json", "another"]
    first, second = split_eval(dataset, args), split_eval(dataset, args)
    assert first[1]["text"] == second[1]["text"]
    assert set(first[0]["text"]).isdisjoint(first[1]["text"])


def test_text_folder_and_glob(tmp_path):
    for name in ("x.txt", "y.txt"):
        (tmp_path / name).write_text(f"doc {name}", encoding="utf-8")
    assert len(load_text(data_args(text_sources=[str(tmp_path)]))) == 2
    assert len(load_text(data_args(text_sources=[str(tmp_path / "*.txt")]))) == 2
    with pytest.raises(PipelineError, match="glob matches no files"):
        load_text(data_args(text_sources=[str(tmp_path / "*.none")]))


def test_a_chat_text_source_renders_a_dialog_source_in_the_chat_template_with_the_same_ids(tmp_path):
    conversations = [[{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
                     for i in range(3)] + [[{"role": "user", "content": "a monologue, no reply"}]]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in conversations])
    plain = tmp_path / "plain.txt"
    plain.write_text("\n\n".join(map(conversation_text, conversations)), encoding="utf-8")
    text = load_text(data_args(text_sources=[f"chat:{path}"]))
    assert text["text"][0] == "<|user|>hi 0<|end|><|assistant|>hello 0<|end|>"
    assert text["text"][3] == "<|user|>a monologue, no reply<|end|>", "a conversation without a reply is text"
    # One identity however a conversation is written: as a dialog, as plain text, in the chat template.
    assert text["id"][:3] == load_dialogs(data_args(dialog_sources=[str(path)]))["id"]
    assert text["id"] == load_text(data_args(text_sources=[str(plain)]))["id"]
    with pytest.raises(PipelineError, match="nope.jsonl: file not found"):
        load_text(data_args(text_sources=[f"chat:{tmp_path / 'nope.jsonl'}"]))


def test_chitchat_is_validated_like_every_source_and_counts_what_it_drops():
    reports = []
    dialogs = load_dialogs(data_args(dialog_sources=["chitchat"]), reports)
    (report,) = reports
    # 7,168 conversations: 3,151 have one sender only, and 8 of the rest are exact copies of another.
    assert report.total == 7168
    assert report.dropped == {"conversations without a reply": 3151, "exact duplicates": 8, "empty messages": 33}
    assert len(dialogs) == 7168 - 3151 - 8 == report.kept
    assert "dropped 3151 conversations without a reply" in report.summary()
    assert len(set(dialogs["id"])) == len(dialogs)
    for messages in dialogs.select(range(50))["messages"]:
        roles = [m["role"] for m in messages]
        assert roles[0] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))


@pytest.mark.parametrize("corpus, conversations, read_dropped, dialogs_dropped", [
    ("repository", 32, {}, {}),
    ("shared", 201, {"empty lines": 1}, {"empty lines": 1, "conversations without a reply": 1}),
])
def test_cornell_sample_loads_in_original_format(corpus, conversations, read_dropped, dialogs_dropped):
    folder = CORNELL_MINI if corpus == "repository" else shared_corpus(CORNELL)
    bad = BadRows("cornell")
    read = cornell_conversations(folder, bad)
    assert len(read) == conversations and not bad.problems
    assert read[0][0]["role"] == "user" and read[0][1]["role"] == "assistant"
    assert bad.dropped == read_dropped
    reports = []
    dialogs = load_dialogs(data_args(dialog_sources=[f"cornell:{folder}"]), reports)
    assert len(dialogs) == conversations - sum(v for k, v in dialogs_dropped.items() if k.startswith("conversations"))
    assert reports[0].dropped == dialogs_dropped, "the shared sample's only reply of one conversation is empty"


UTF8_LINES = [("L1", "u0", "Привет! Как дела?"), ("L2", "u1", "元気です。ありがとう…"),
              ("L3", "u0", "مرحبا 👋 ça va ?"), ("L4", "u1", "Ελληνικά\u2028και\u0085όχι")]


def test_utf8_cornell_with_crlf_loads_exactly_with_utf8_and_fails_under_the_default(tmp_path):
    folder = write_cornell(tmp_path / "translated", UTF8_LINES, [["L1", "L2"], ["L3", "L4"]], "utf-8", "\r\n")
    dialogs = load_dialogs(data_args(dialog_sources=[f"cornell:{folder}"], encoding="utf-8"))
    texts = [turn["content"] for messages in dialogs["messages"] for turn in messages]
    assert texts == [text for _, _, text in UTF8_LINES]
    assert [turn["role"] for turn in dialogs["messages"][1]] == ["user", "assistant"]
    with pytest.raises(PipelineError, match="looks like UTF-8 but it is read as iso-8859-1 .data.encoding: auto.; "
                                            "set data.encoding: utf-8") as failure:
        load_dialogs(data_args(dialog_sources=[f"cornell:{folder}"]))
    assert "\n" not in str(failure.value)


def test_cornell_latin1_is_decoded_and_refused_as_utf8(tmp_path):
    folder = write_cornell(tmp_path, [("L1", "u0", "Caf\xe9 \x85 ?"), ("L2", "u1", "Oui.")], [["L1", "L2"]])
    (conversation,) = cornell_conversations(folder, BadRows("cornell"))
    assert conversation == [{"role": "user", "content": "Café \x85 ?"}, {"role": "assistant", "content": "Oui."}]
    with pytest.raises(PipelineError, match="movie_(lines|conversations).txt: not valid UTF-8"):
        cornell_conversations(folder, BadRows("cornell"), encoding="utf-8")


def test_conversations_with_missing_lines_count_toward_max_bad_fraction(tmp_path):
    source = f"cornell:{most_lines_missing(tmp_path / 'cut')}"
    with pytest.raises(PipelineError, match=r"skipped 94 of 100 rows \(94%; line ids not in movie_lines.txt: 94\)"
                                            r".*over data.max_bad_fraction=0.1"):
        load_dialogs(data_args(dialog_sources=[source]))
    reports = []
    dialogs = load_dialogs(data_args(dialog_sources=[source], max_bad_fraction=0.95), reports)
    assert len(dialogs) == 6
    assert reports[0].summary() == (f"{source}: loaded 6 conversations (12 turns); lost 94 conversations (188 turns) "
                                    "(line ids not in movie_lines.txt: 94)")
    assert reports[0].as_dict()["lost_by_cause"] == {"line ids not in movie_lines.txt": 94}


def test_cornell_rows_with_missing_fields_lose_their_conversations(tmp_path, caplog):
    lines = [(f"L{i}", f"u{i % 2}", f"line {i}") for i in range(40)]
    folder = write_cornell(tmp_path, lines, [[f"L{2 * c}", f"L{2 * c + 1}"] for c in range(20)])
    rows = (folder / "movie_lines.txt").read_text(encoding="latin-1").split("\n")
    rows[3] = rows[3].replace(CORNELL_SEPARATOR + "U1", "")
    (folder / "movie_lines.txt").write_text("\n".join(rows), encoding="latin-1")
    bad = BadRows("cornell")
    assert len(cornell_conversations(folder, bad)) == 19
    assert bad.causes == {"lines malformed in movie_lines.txt": 1}
    assert "1 rows without 5 fields" in caplog.text and "line 4" in caplog.text


def test_chat_and_prompt_completion_files(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
    ])
    pc = tmp_path / "pc.json"
    pc.write_text(json.dumps([{"prompt": "how are you ?", "completion": "fine"}]), encoding="utf-8")
    dialogs = load_dialogs(data_args(dialog_sources=[str(chat), str(pc)]))
    assert dialogs["messages"][1] == [{"role": "user", "content": "how are you ?"},
                                      {"role": "assistant", "content": "fine"}]
    assert dialogs["messages"][0][0]["role"] == "system"


def test_chat_parquet(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"messages": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]}
                      ).to_parquet(str(tmp_path / "d.parquet"))
    assert len(load_dialogs(data_args(dialog_sources=[str(tmp_path / "d.parquet")]))) == 1


def test_malformed_rows_are_reported_with_line_numbers_and_skipped(tmp_path, caplog):
    good = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"yo {i}"}]}
            for i in range(8)]
    path = write_jsonl(tmp_path / "mixed.jsonl", good + [
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        '{"messages": [{"role": "user", "content": "cut',
    ])
    dialogs = load_dialogs(data_args(dialog_sources=[str(path)], max_bad_fraction=0.5))
    assert len(dialogs) == 8
    assert "skipped 2 of 10 rows" in caplog.text
    assert f"{path}:9: turn 0 has unknown role 'robot'" in caplog.text
    assert f"{path}:10: cut short (Unterminated string" in caplog.text


def test_a_latin1_jsonl_file_is_refused_as_a_whole_with_the_encoding_to_set(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps({"messages": [{"role": "user", "content": "café"}]}, ensure_ascii=False)
                     .encode("latin-1") + b"\n")
    with pytest.raises(PipelineError, match="not valid UTF-8.*data.encoding: latin-1"):
        load_dialogs(data_args(dialog_sources=[str(path)]))


@pytest.mark.parametrize("row, reason", [
    ({"messages": []}, "empty conversation"),
    ({"messages": [{"role": "user"}]}, "turn 0 has no content"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "content is not text"),
    ([1, 2], "expected a JSON object"),
    ({"text": "no messages"}, "expected a 'messages' list"),
])
def test_each_malformed_row_fails_over_the_threshold(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(PipelineError, match=reason):
        load_dialogs(data_args(dialog_sources=[str(path)]))


def test_conversations_without_a_reply_are_dropped_and_counted_not_malformed(tmp_path):
    question = {"messages": [{"role": "user", "content": "only a question"}]}
    answered = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"yo {i}"}]}
                for i in range(2)]
    path = write_jsonl(tmp_path / "some.jsonl", [question] * 3 + answered)
    reports = []
    assert len(load_dialogs(data_args(dialog_sources=[str(path)]), reports)) == 2, "3 of 5 is not fatal"
    assert reports[0].dropped == {"conversations without a reply": 3} and not reports[0].problems
    only = write_jsonl(tmp_path / "only.jsonl", [question])
    with pytest.raises(PipelineError, match="only.jsonl: no usable conversations.*dropped 1 conversations without a reply"):
        load_dialogs(data_args(dialog_sources=[str(only)]))


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(PipelineError, match="nope.txt: file not found"):
        load_text(data_args(text_sources=[str(tmp_path / "nope.txt")]))
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="no text found"):
        load_text(data_args(text_sources=[str(tmp_path / "empty.txt")]))
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(PipelineError, match="no usable conversations"):
        load_dialogs(data_args(dialog_sources=[str(tmp_path / "empty.jsonl")]))


def test_encodings(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(PipelineError, match="not valid UTF-8.*data.encoding: latin-1"):
        read_text_file(latin)
    assert read_text_file(latin, "latin-1") == "café crème"
    utf8 = tmp_path / "utf8.txt"
    utf8.write_text("café", encoding="utf-8")
    with pytest.raises(PipelineError, match="looks like UTF-8"):
        read_text_file(utf8, "latin-1")
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffline one\r\nline two\r\n".encode())
    assert read_text_file(bom) == "line one\nline two\n"


def test_json_that_is_not_a_list_of_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('"just a string"', encoding="utf-8")
    with pytest.raises(PipelineError, match="expected a JSON list of objects"):
        load_dialogs(data_args(dialog_sources=[str(path)]))


def test_conversation_windows_start_at_user_and_end_at_assistant():
    turns = [{"role": "system", "content": "s"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(9)]
    windows = conversation_windows(turns, max_turns=4)
    assert [len(w) for w in windows] == [5, 5]
    for window in windows:
        assert window[0]["role"] == "system" and window[1]["role"] == "user" and window[-1]["role"] == "assistant"


def test_conversation_windows_fit_a_token_budget_and_leave_out_an_exchange_too_long_alone():
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(10)]
    tokens = [3, 3, 3, 3, 30, 3, 3, 3, 3, 3]  # the exchange of turns 4 and 5 does not fit in 20 tokens
    windows = conversation_windows(turns, 8, tokens, max_tokens=20)
    assert [[t["content"] for t in w] for w in windows] == [["0", "1", "2", "3"], ["6", "7", "8", "9"]]


def test_sft_windows_fit_the_context_once_rendered():
    from minichatgpt.data.tokenized import windows
    from minichatgpt.model.tokenizer import train_tokenizer

    dialogs = load_dialogs(data_args(dialog_sources=["chitchat"], max_documents_per_source=60))
    turns = sum(len(m) for m in dialogs["messages"])
    tokenizer = train_tokenizer([t["content"] for m in dialogs["messages"] for t in m], 600, 2)
    cut = windows(dialogs, 8, tokenizer, 128)
    lengths = [len(tokenizer.apply_chat_template(w, return_dict=False)) for w in cut["messages"]]
    assert max(lengths) <= 128, "the trainer would truncate a window"
    assert sum(len(w) for w in cut["messages"]) > 0.8 * turns, "most turns are in some window"


def test_prompt_reply_pairs_end_at_user_turns():
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    pairs = prompt_reply_pairs([conv], max_context_turns=2)
    assert pairs == [(conv[:1], "b"), (conv[1:3], "d")]


def test_csv_with_a_named_text_column_and_save_to_disk_folder(tmp_path):
    from datasets import Dataset

    (tmp_path / "t.csv").write_text("id,body\n1,first row\n2,second row\n", encoding="utf-8")
    args = data_args(text_sources=[str(tmp_path / "t.csv")], text_column="body")
    assert load_text(args)["text"] == ["first row", "second row"]
    Dataset.from_dict({"body": ["saved"]}).save_to_disk(str(tmp_path / "saved"))
    args = data_args(text_sources=[f"disk:{tmp_path / 'saved'}"], text_column="body")
    assert load_text(args)["text"] == ["saved"]
    with pytest.raises(PipelineError, match="no 'text' column"):
        load_text(data_args(text_sources=[f"disk:{tmp_path / 'saved'}"]))


def test_hub_sources_fail_with_one_line_when_offline():
    with pytest.raises(PipelineError, match="hub:no-such/dataset: could not load from the hub"):
        load_text(data_args(text_sources=["hub:no-such/dataset"]))


def test_text_longer_than_the_context_is_packed_not_refused():
    from datasets import Dataset

    from minichatgpt.data.tokenized import pack_blocks
    from minichatgpt.model.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a few words of text"] * 20, vocab_size=300, min_frequency=1)
    long_document = " ".join(f"word{i}" for i in range(400))
    blocks = pack_blocks(Dataset.from_dict({"text": [long_document, "short"]}), tokenizer, 32, None)
    assert len(blocks) > 10 and all(len(b) == 32 for b in blocks["input_ids"])
    assert blocks["input_ids"] == blocks["labels"]


def test_text_unit_line_paragraph_and_file(tmp_path):
    lines = ["first document, one line", "  second one, indented", "третий документ"]
    path = tmp_path / "docs.txt"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    one_document = data_args(text_sources=[str(path)])
    with pytest.raises(PipelineError, match="only 1 example.*one document per paragraph, data.text_unit; set it to "
                                            "line"):
        split_eval(load_text(one_document), one_document)
    assert load_text(data_args(text_sources=[str(path)], text_unit="line"))["text"] == lines
    assert load_text(data_args(text_sources=[str(path)], text_unit="file"))["text"] == ["\n".join(lines)]


def test_table_files_in_other_encodings_with_a_bom_and_windows_line_ends(tmp_path):
    texts = ["naïve café", "123", "NA", "two\nlines", "日本語"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts).encode())
    as_json = tmp_path / "t.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": t} for t in texts], indent=1).replace("\n", "\r\n")
                        .encode())
    csv_file = tmp_path / "t.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + b"id,text\r\n" + "".join(
        f'{i},"{t}"\r\n' for i, t in enumerate(texts)).encode())
    for path in (jsonl, as_json, csv_file):
        assert load_text(data_args(text_sources=[str(path)]))["text"] == texts, path
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts[:4]).encode("latin-1"))
    with pytest.raises(PipelineError, match="latin.jsonl: not valid UTF-8.*set data.encoding: latin-1"):
        load_text(data_args(text_sources=[str(latin)]))
    assert load_text(data_args(text_sources=[str(latin)], encoding="latin-1"))["text"] == texts[:4]
    utf16 = tmp_path / "wide.txt"
    utf16.write_bytes("für\n\nzwei".encode("utf-16"))
    with pytest.raises(PipelineError, match="wide.txt: starts with a UTF-16 byte order mark"):
        load_text(data_args(text_sources=[str(utf16)]))
    assert load_text(data_args(text_sources=[str(utf16)], encoding="utf-16"))["text"] == ["für", "zwei"]
    with pytest.raises(PipelineError, match="data.encoding: unknown encoding 'klingon'"):
        load_text(data_args(text_sources=[str(utf16)], encoding="klingon"))


def test_text_rows_that_are_not_text_are_counted(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": [1, 2, 3]}).to_parquet(str(tmp_path / "numbers.parquet"))
    with pytest.raises(PipelineError, match="skipped 3 of 3 rows .*'text' is int, not text"):
        load_text(data_args(text_sources=[str(tmp_path / "numbers.parquet")]))
    write_jsonl(tmp_path / "some.jsonl", [{"text": "kept"}, {"text": ""}, {"text": None}, {"text": "also kept"}])
    reports = []
    assert load_text(data_args(text_sources=[str(tmp_path / "some.jsonl")]), reports)["text"] == ["kept", "also kept"]
    assert reports[0].summary() == f"{tmp_path / 'some.jsonl'}: loaded 2 documents; dropped 2 blank rows"


def test_save_to_disk_folders_of_the_wrong_shape(tmp_path):
    from datasets import Dataset, DatasetDict

    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    DatasetDict({"train": Dataset.from_dict({"messages": messages}), "test": Dataset.from_dict({"messages": messages})}
                ).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(PipelineError, match=r"holds the splits \['train', 'test'\].*disk:.*splits/train"):
        load_dialogs(data_args(dialog_sources=[f"disk:{tmp_path / 'splits'}"]))
    assert load_dialogs(data_args(dialog_sources=[f"disk:{tmp_path / 'splits' / 'train'}"]))["messages"] == messages
    (tmp_path / "plain").mkdir()
    with pytest.raises(PipelineError, match="not a datasets.save_to_disk folder"):
        load_text(data_args(text_sources=[f"disk:{tmp_path / 'plain'}"]))


def test_mixed_sources_where_one_is_empty(tmp_path):
    (tmp_path / "full.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(PipelineError, match="empty.txt: no text found"):
        load_text(data_args(text_sources=[str(tmp_path / "full.txt"), str(tmp_path / "empty.txt")]))
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    (tmp_path / "none.jsonl").write_text("\r\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="none.jsonl: no usable conversations"):
        load_dialogs(data_args(dialog_sources=[str(chat), str(tmp_path / "none.jsonl")]))


def test_sft_card_and_summary_report_the_data(smoke_run):
    sft = smoke_run["hub"] / "smoke-sft"
    assert "## Data\n\n- chitchat: loaded 200 conversations (" in (sft / "README.md").read_text(encoding="utf-8")
    (data,) = read_metadata(sft)["data"]
    assert data["source"] == "chitchat" and data["loaded"] == 200 and data["lost"] == 0
    # Of 7,168 conversations, 3,151 have no reply and 8 are exact copies of another: 4,009 left for the cap.
    assert data["left_out_by_cap"] == 4009 - 200
    assert data["dropped"]["conversations without a reply"] == 3151
    assert "sft data: " in smoke_run["log"] and "chitchat: loaded 200 conversations" in smoke_run["log"]
