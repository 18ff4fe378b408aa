"""docs/troubleshooting.md's table of messages, walked: every row names a phrase of its message that a trigger here
makes happen with real inputs (files, recipes, folders, tiny models), and the line it gets holds that phrase."""

import json
import math
import re

import pytest
import torch
import yaml
from conftest import ROOT, most_lines_missing, write_cornell, write_jsonl
from datasets import Dataset, DatasetDict
from transformers import GenerationConfig, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from minichatgpt.arguments import DataArguments
from minichatgpt.chat import set_setting
from minichatgpt.console import run_stage
from minichatgpt.data.splits import load_dialogs, load_text, text_splits
from minichatgpt.errors import PipelineError
from minichatgpt.hub import check_name, check_writable, push
from minichatgpt.model.loading import check_vocab, load_tokenizer, require_model_folder
from minichatgpt.model.tokenizer import train_tokenizer
from minichatgpt.recipe import load_recipe
from minichatgpt.serving import served_folder
from minichatgpt.training.defaults import fit_context, trainer_defaults
from minichatgpt.training.guards import RLHFGuards
from minichatgpt.training.rl import group_config, load_rl_models

TEXTS = ["hello there, how are you today?", "i am fine, thanks. and you?", "what do you like to do on weekends?"]


def table_rows() -> list[str]:
    """The message cells of the troubleshooting table."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    table = page.split("## Messages", 1)[1].split("\n## ", 1)[0]
    return [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| `") or line.startswith("| (")]


def recipe_file(tmp_path, **changes):
    """The smoke recipe, its hub and runs under tmp_path, with `changes`: the keys of a section, or a top-level value."""
    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    recipe.update(hub_dir=str(tmp_path / "hub"), output_root=str(tmp_path / "runs"))
    for key, value in changes.items():
        recipe[key] = {**(recipe.get(key) or {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def data(**kwargs):
    return DataArguments(**kwargs)


def tiny_folder(folder, tokenizer, model_class=GPT2LMHeadModel, n_positions=32):
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                        pad_token_id=tokenizer.pad_token_id, num_labels=1)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def unknown_recipe(tmp_path):
    load_recipe(tmp_path / "x.yaml")


def typo_key(tmp_path):
    load_recipe(recipe_file(tmp_path, pretrain={"learnin_rate": 1e-3}))


def wrong_type(tmp_path):
    load_recipe(recipe_file(tmp_path, model={"n_layer": "two"}))


def bad_shape(tmp_path):
    load_recipe(recipe_file(tmp_path, model={"n_head": 3, "n_embd": 100}))


def too_long(tmp_path):
    fit_context(load_recipe(recipe_file(tmp_path, sft={"max_length": 4096})), "sft", 4096, 128)


def negative_cap(tmp_path):
    load_recipe(recipe_file(tmp_path, data={"max_documents_per_source": -1}))


def other_split(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, run_name="x"))
    folder = recipe.hub_path("tokenizer")
    folder.mkdir(parents=True)
    (folder / "minichatgpt.json").write_text(json.dumps({"data_split": {"split_seed": 1234}}))
    recipe.parse_stage("pretrain", ["--split_seed", "7"], defaults=trainer_defaults())


def missing_file(tmp_path):
    load_text(data(text_sources=[str(tmp_path / "path.txt")]))


def empty_source(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    load_text(data(text_sources=[str(tmp_path / "empty.txt")]))


def latin1_as_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    load_text(data(text_sources=[str(tmp_path / "latin1.txt")], encoding="utf-8"))


def utf8_cornell(tmp_path):
    folder = write_cornell(tmp_path / "cornell", [("L1", "u0", "Привет"), ("L2", "u1", "ça va")], [["L1", "L2"]],
                           "utf-8")
    load_dialogs(data(dialog_sources=[f"cornell:{folder}"]))


def utf16(tmp_path):
    (tmp_path / "utf16.txt").write_bytes("hello\n".encode("utf-16"))
    load_text(data(text_sources=[str(tmp_path / "utf16.txt")]))


def bad_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
            for i in range(7)] + [{"messages": [{"role": "robot", "content": f"beep {i}"}]} for i in range(3)]
    load_dialogs(data(dialog_sources=[str(write_jsonl(tmp_path / "file.jsonl", rows))]))


def cornell_cut_short(tmp_path):
    load_dialogs(data(dialog_sources=[f"cornell:{most_lines_missing(tmp_path / 'x')}"]))


def one_document(tmp_path):
    (tmp_path / "lines.txt").write_text("one line\nanother line\n", encoding="utf-8")
    text_splits(data(text_sources=[str(tmp_path / "lines.txt")]))


def split_folder(tmp_path):
    splits = DatasetDict({"train": Dataset.from_dict({"text": ["a"]}), "test": Dataset.from_dict({"text": ["b"]})})
    splits.save_to_disk(tmp_path / "x")
    load_text(data(text_sources=[f"disk:{tmp_path / 'x'}"]))


def no_tokenizer(tmp_path):
    load_tokenizer(tmp_path / "hub" / "x-tokenizer")


def pickle_only(tmp_path):
    (tmp_path / "m").mkdir()
    torch.save({}, tmp_path / "m" / "pytorch_model.bin")
    require_model_folder(tmp_path / "m", "model")


def no_weights(tmp_path):
    (tmp_path / "m").mkdir()
    require_model_folder(tmp_path / "m", "model")


def vocab_mismatch(tmp_path):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, min_frequency=1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer) - 10, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    check_vocab(model, tokenizer, tmp_path)


def other_reward_tokenizer(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, run_name="x"))
    tiny_folder(recipe.hub_path("sft"), train_tokenizer(TEXTS, vocab_size=300, min_frequency=1))
    tiny_folder(recipe.hub_path("reward"), train_tokenizer(TEXTS[:1], vocab_size=280, min_frequency=1),
                GPT2ForSequenceClassification)
    _, _, config = recipe.parse_stage("ppo", [], defaults=trainer_defaults())
    load_rl_models(recipe, config)


def non_finite(tmp_path):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, min_frequency=1)
    guards = RLHFGuards(tokenizer, [[{"role": "user", "content": "hi"}]], max_kl=10.0, max_prompt_tokens=16,
                        max_new_tokens=4, stage="PPO")
    state = type("State", (), {"global_step": 3, "log_history": []})()
    guards.on_log(None, state, None, logs={"objective/scores": math.nan, "objective/kl": 0.1}, model=None)


def rloo_batch(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, ppo={"algorithm": "rloo", "rloo_num_generations": 4,
                                                    "per_device_train_batch_size": 6,
                                                    "gradient_accumulation_steps": 1}))
    _, stage_args, config = recipe.parse_stage("ppo", [], defaults=trainer_defaults())
    group_config(config, stage_args, [1.0])


def rloo_without_kl(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, ppo={"algorithm": "rloo", "kl_coef": 0.0, "rloo_num_generations": 4,
                                                    "per_device_train_batch_size": 8,
                                                    "gradient_accumulation_steps": 1}))
    _, stage_args, config = recipe.parse_stage("ppo", [], defaults=trainer_defaults())
    group_config(config, stage_args, [1.0])


def full_hub(tmp_path, small_disk):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    check_writable(small_disk, model)


def failed_push(tmp_path, small_disk):
    def fill(folder):
        (folder / "model.safetensors").write_bytes(b"0" * 2**21)

    push(small_disk, "x-sft", fill, metadata={}, card_body="", card_metadata={}, keep_revisions=0)


def full_checkpoint_disk(tmp_path, small_disk, capsys, monkeypatch):
    def save_checkpoint(recipe, overrides):
        (small_disk / "checkpoint-1").mkdir()
        (small_disk / "checkpoint-1" / "model.safetensors").write_bytes(b"0" * 2**21)

    monkeypatch.setattr("sys.argv", ["stage", "--config", str(recipe_file(tmp_path, output_root=str(small_disk)))])
    with pytest.raises(SystemExit):
        run_stage(save_checkpoint, "a stage")
    raise PipelineError(capsys.readouterr().err)


def bad_chat_setting(tmp_path):
    set_setting(GenerationConfig(do_sample=True), "top_p", "1.5", 64)


def unserved_model(tmp_path):
    (tmp_path / "hub" / "run-sft").mkdir(parents=True)
    served_folder("x", tmp_path / "hub", [])


def path_as_name(tmp_path):
    check_name("../x")


# The phrase each row of the table holds, and what makes it happen.
TRIGGERS = {
    "recipe file not found": unknown_recipe,
    "(did you mean 'learning_rate'?)": typo_key,
    "invalid int value: 'two'": wrong_type,
    "must divide model.n_embd": bad_shape,
    "is above the model's 128 positions": too_long,
    "max_documents_per_source must be at least 1, got -1": negative_cap,
    "made with the held-out split": other_split,
    "file not found": missing_file,
    "no text found": empty_source,
    "not valid UTF-8": latin1_as_utf8,
    "looks like UTF-8 but it is read as iso-8859-1": utf8_cornell,
    "starts with a UTF-16 byte order mark": utf16,
    "over data.max_bad_fraction": bad_rows,
    "line ids not in movie_lines.txt": cornell_cut_short,
    "data.text_unit": one_document,
    "holds the splits ['train', 'test']": split_folder,
    "folder not found; run the stage that makes it first": no_tokenizer,
    "only pickle weights (pytorch_model.bin)": pickle_only,
    "has no weights (*.safetensors)": no_weights,
    "token embeddings but the tokenizer has": vocab_mismatch,
    "the reward model was built for another tokenizer": other_reward_tokenizer,
    "non-finite": non_finite,
    "must divide the replies per batch": rloo_batch,
    "kl_coef must be above 0 with algorithm rloo": rloo_without_kl,
    "MiB free on disk, need at least": full_hub,
    "failed (No space left on device": failed_push,
    "is full (": full_checkpoint_disk,
    "top_p must be above 0 and at most 1, got 1.5": bad_chat_setting,
    "is not a model this page serves; load one of:": unserved_model,
    "'../x' is not a valid name": path_as_name,
}
DISK = {full_hub, failed_push, full_checkpoint_disk}


def test_every_row_of_the_table_has_a_trigger_here():
    rows = table_rows()
    assert len(rows) >= 25
    untriggered = [row for row in rows if not any(phrase in row for phrase in TRIGGERS)]
    assert untriggered == [], "give each new row of docs/troubleshooting.md a trigger in TRIGGERS"
    unused = [phrase for phrase in TRIGGERS if not any(phrase in row for row in rows)]
    assert unused == [], "a phrase no row of the table holds"


@pytest.mark.parametrize("phrase", TRIGGERS)
def test_each_row_gets_the_line_the_table_shows(phrase, tmp_path, request):
    trigger = TRIGGERS[phrase]
    extra = {}
    if trigger in DISK:
        extra["small_disk"] = request.getfixturevalue("small_disk")
    if trigger is full_checkpoint_disk:
        extra.update(capsys=request.getfixturevalue("capsys"), monkeypatch=request.getfixturevalue("monkeypatch"))
    with pytest.raises((PipelineError, ValueError)) as raised:
        trigger(tmp_path, **extra)
    line = str(raised.value).strip()
    assert phrase in line, line
    assert "\n" not in line.removeprefix("error: ").split("; ")[0], "one line"
    assert re.search(r"Traceback", line) is None
