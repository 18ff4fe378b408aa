"""Bad input: one clear line naming the file/key, a non-zero exit, no traceback, nothing half-written in the hub."""

import json
import shutil

import pytest
import torch
from conftest import most_lines_missing, run_cli, seed_hub, write_cornell, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from minichatgpt.data.files import read_records
from minichatgpt.model.tokenizer import train_tokenizer


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def hub_names(tmp_path):
    hub = tmp_path / "hub"
    return sorted(p.name for p in hub.iterdir()) if hub.is_dir() else []


def test_unknown_recipe_key(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, tokenizer={"vocab_sise": 500})
    result = run_cli(["tokenizer/train.py", "--config", recipe])
    assert_one_line_error(result, "r.yaml", "tokenizer.vocab_sise", "did you mean 'vocab_size'")
    assert hub_names(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, tokenizer={"vocab_sise": 500})
    result = run_cli(["tokenizer/train.py", "--config", recipe, "--debug"])
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("data, fragment", [
    ({"text_sources": ["missing/corpus.txt"]}, "missing/corpus.txt: file not found"),
    ({"text_sources": ["EMPTY"]}, "no text found"),
    ({"text_sources": ["LATIN1"]}, "not valid UTF-8"),
])
def test_bad_text_data(tmp_path, data, fragment):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin.txt").write_bytes("d\xe9j\xe0 vu".encode("latin-1"))
    names = {"EMPTY": str(tmp_path / "empty.txt"), "LATIN1": str(tmp_path / "latin.txt")}
    data = {"text_sources": [names.get(s, s) for s in data["text_sources"]]}
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, data=data)
    assert_one_line_error(run_cli(["tokenizer/train.py", "--config", recipe]), fragment)
    assert hub_names(tmp_path) == []


def test_one_document_per_line_names_the_text_unit(tmp_path):
    (tmp_path / "lines.txt").write_text("one document\nper line\nin this file\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, data={"text_sources": [str(tmp_path / "lines.txt")]})
    assert_one_line_error(run_cli(["tokenizer/train.py", "--config", recipe]), "only 1 example", "data.text_unit")
    assert hub_names(tmp_path) == []


def test_vocab_size_too_small(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, tokenizer={"vocab_size": 0})
    assert_one_line_error(run_cli(["tokenizer/train.py", "--config", recipe]), "tokenizer.vocab_size must be at least")


def test_missing_tokenizer_for_pretraining(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    assert_one_line_error(run_cli(["pipeline/pretrain.py", "--config", recipe]), "r-tokenizer", "not found")


def test_unwritable_hub_fails_before_training(tmp_path):
    (tmp_path / "blocker").write_text("a file where the hub should be")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, hub_dir=str(tmp_path / "blocker" / "hub"))
    assert_one_line_error(run_cli(["tokenizer/train.py", "--config", recipe]), "hub folder is not writable")


@pytest.fixture
def sft_hub(smoke_run, tmp_path):
    for stage in ("tokenizer", "base"):
        shutil.copytree(smoke_run["hub"] / f"smoke-{stage}", tmp_path / "hub" / f"r-{stage}")
    return tmp_path / "hub"


def test_base_model_with_only_pickle_weights_is_refused(sft_hub, tmp_path):
    base = sft_hub / "r-base"
    model = AutoModelForCausalLM.from_pretrained(base)
    (base / "model.safetensors").unlink()
    torch.save(model.state_dict(), base / "pytorch_model.bin")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    assert_one_line_error(run_cli(["pipeline/sft.py", "--config", recipe]), "only pickle weights")
    assert "r-sft" not in hub_names(tmp_path)


def test_model_folder_without_weights(sft_hub, tmp_path):
    (sft_hub / "r-base" / "model.safetensors").unlink()
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    assert_one_line_error(run_cli(["pipeline/sft.py", "--config", recipe]), "has no weights")


def test_tokenizer_and_model_vocab_mismatch(sft_hub, tmp_path):
    bigger = train_tokenizer([f"word{i} other{i}" for i in range(3000)], vocab_size=3000, min_frequency=1)
    bigger.save_pretrained(sft_hub / "r-base")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    assert_one_line_error(run_cli(["pipeline/sft.py", "--config", recipe]), "token embeddings but the tokenizer has")


def test_context_length_above_the_model_positions(sft_hub, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, sft={"max_length": 4096})
    assert_one_line_error(run_cli(["pipeline/sft.py", "--config", recipe]),
                          "sft.max_length=4096 is above the model's 128 positions")


def test_dialogs_without_assistant_turns(sft_hub, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "alone"}]}) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, data={"dialog_sources": [str(path)]})
    assert_one_line_error(run_cli(["pipeline/sft.py", "--config", recipe]), "d.jsonl: no usable conversations",
                          "dropped 1 conversations without a reply")


def test_reward_model_built_for_another_tokenizer(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "r")
    other = train_tokenizer([f"alpha{i} beta{i}" for i in range(500)], vocab_size=600, min_frequency=1)
    other.save_pretrained(tmp_path / "hub" / "r-reward")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "hub" / "r-reward")) <= 600
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    assert_one_line_error(run_cli(["pipeline/ppo.py", "--config", recipe]), "built for another tokenizer")
    assert "r-ppo" not in hub_names(tmp_path)


@pytest.mark.parametrize("corpus, fragments", [
    ("utf-8", ["movie_", "looks like UTF-8 but it is read as iso-8859-1", "set data.encoding: utf-8"]),
    ("lines missing", ["skipped 94 of 100 rows (94%; line ids not in movie_lines.txt: 94)",
                       "over data.max_bad_fraction=0.1"]),
])
def test_bad_cornell_folders(sft_hub, tmp_path, corpus, fragments):
    if corpus == "utf-8":
        folder = write_cornell(tmp_path / "c", [("L1", "u0", "Привет"), ("L2", "u1", "Здравствуйте")], [["L1", "L2"]],
                               encoding="utf-8", newline="\r\n")
    else:
        folder = most_lines_missing(tmp_path / "c")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, data={"dialog_sources": [f"cornell:{folder}"]})
    assert_one_line_error(run_cli(["pipeline/sft.py", "--config", recipe]), *fragments)
    assert "r-sft" not in hub_names(tmp_path)


@pytest.mark.parametrize("strategies, fragment", [
    (["greedy", "beam"], "section 'eval': strategies must include sample"),
    (["sample", "nucleus"], "invalid choice: 'nucleus'"),
])
def test_bad_eval_strategies_stop_the_run_before_any_stage(tmp_path, strategies, fragment):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, eval={"strategies": strategies})
    assert_one_line_error(run_cli(["pipeline/run.py", "--config", recipe]), "r.yaml", fragment)
    assert hub_names(tmp_path) == []


@pytest.mark.parametrize("section, values, fragment", [
    ("data", {"max_documents_per_source": -1}, "section 'data': max_documents_per_source must be at least 1, got -1"),
    ("data", {"max_eval_examples": -5}, "section 'data': max_eval_examples must be at least 1, got -5"),
    ("data", {"eval_fraction": 1.0}, "section 'data': eval_fraction must be above 0 and below 1, got 1.0"),
    ("ppo", {"context_turns": 0}, "section 'ppo': context_turns must be at least 1, got 0"),
    ("reward", {"replies_per_prompt": 1}, "section 'reward': replies_per_prompt must be at least 2, got 1"),
])
def test_values_a_setting_cannot_mean_stop_the_run_before_any_stage(tmp_path, section, values, fragment):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, **{section: values})
    assert_one_line_error(run_cli(["pipeline/run.py", "--config", recipe]), "r.yaml", fragment)
    assert hub_names(tmp_path) == []


def test_a_csv_cell_longer_than_the_csv_modules_limit_is_read(tmp_path):
    article = "word " * 40_000  # 200,000 characters, over the csv module's default field limit of 131,072
    (tmp_path / "long.csv").write_text(f'id,text\n1,"{article}"\n2,short\n', encoding="utf-8")
    (text,) = [d for d in read_records(tmp_path / "long.csv") if d[1]["id"] == "1"]
    assert text == (f"{tmp_path / 'long.csv'}:2", {"id": "1", "text": article})


def test_a_stage_with_another_held_out_split_than_the_model_it_builds_on_is_refused(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    run_cli(["tokenizer/train.py", "--config", recipe], check=True)
    result = run_cli(["pipeline/pretrain.py", "--config", recipe, "--split_seed", "7"])
    assert_one_line_error(result, f"{tmp_path / 'hub' / 'r-tokenizer'}: made with the held-out split",
                          "'split_seed': 7", "redo tokenizer first")
    assert hub_names(tmp_path) == [".revisions", "r-tokenizer"]
