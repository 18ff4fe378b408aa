from pathlib import Path

import pytest
import yaml

from minichatgpt.errors import PipelineError
from minichatgpt.recipe import SECTIONS, load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_with_the_real_parsers(path):
    recipe = load_recipe(path)
    assert recipe.run_name == (yaml.safe_load(path.read_text()).get("run_name") or path.stem)
    for section in SECTIONS:
        parsed = recipe.parse(section, defaults={"bf16": False} if section in ("pretrain", "sft", "reward", "ppo", "dpo")
                              else None)
        assert parsed


def test_shipped_recipes_and_accelerate_configs_exist():
    assert {"smoke.yaml", "quickstart.yaml", "wikigpt-movie.yaml"} <= {p.name for p in RECIPES}
    assert {p.name for p in (ROOT / "recipes" / "accelerate").glob("*.yaml")} >= {"ddp.yaml", "fsdp.yaml",
                                                                                   "zero2.yaml"}


def test_dpo_runs_only_with_its_section_and_is_redone_when_its_pairs_change(tmp_path):
    assert "dpo" not in load_recipe(ROOT / "recipes" / "quickstart.yaml").stages
    path = tmp_path / "with-dpo.yaml"
    path.write_text("reward:\n  max_pairs: 100\ndpo:\n  beta: 0.2\n")
    recipe = load_recipe(path)
    assert recipe.stages == ("tokenizer", "pretrain", "sft", "reward", "ppo", "dpo")
    _, config = recipe.parse("dpo", defaults={"bf16": False})
    assert config.beta == 0.2 and config.output_dir == "runs/with-dpo/dpo"
    assert recipe.hub_path("dpo") == Path("hub/with-dpo-dpo")
    path.write_text("reward:\n  max_pairs: 200\ndpo:\n  beta: 0.2\n")
    assert load_recipe(path).fingerprint("dpo") != recipe.fingerprint("dpo")
    assert load_recipe(path).fingerprint("ppo") == recipe.fingerprint("ppo")


def test_run_name_defaults_to_file_name_and_cli_overrides(tmp_path):
    path = tmp_path / "myrun.yaml"
    path.write_text("pretrain:\n  learning_rate: 0.01\n")
    recipe = load_recipe(path)
    assert recipe.run_name == "myrun"
    assert recipe.hub_path("pretrain") == Path("hub/myrun-base")
    _, training = recipe.parse("pretrain", ["--learning_rate", "0.5"])
    assert training.learning_rate == 0.5
    assert training.output_dir == "runs/myrun/pretrain"
    _, training = recipe.parse("pretrain")
    assert training.learning_rate == 0.01
    assert recipe.run.keep_revisions == 3
    path.write_text("keep_revisions: 0\n")
    assert load_recipe(path).run.keep_revisions == 0


def bad_recipe(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("pretrain:\n  learnin_rate: 0.1\n", r"unknown key 'pretrain.learnin_rate' \(did you mean 'learning_rate'\?\)"),
    ("pretrian:\n  max_steps: 1\n", r"unknown key 'pretrian' \(did you mean 'pretrain'\?\)"),
    ("distill:\n  max_steps: 1\n", "unknown key 'distill'"),
    ("model:\n  n_layer: two\n", "section 'model': argument --n_layer: invalid int value: 'two'"),
    ("model:\n  n_embd: 100\n  n_head: 3\n", r"model.n_head \(3\) must divide model.n_embd \(100\)"),
    ("model:\n  n_layer: 0\n", "model.n_layer must be a positive integer"),
    ("model:\n  n_positions: -5\n", "model.n_positions must be a positive integer"),
    ("data:\n  eval_fraction: 1.5\n", "section 'data': eval_fraction must be above 0 and below 1, got 1.5"),
    ("run_name: ../escape\n", "run_name: '../escape' is not a valid name"),
    ("run_name: /abs\n", "is not a valid name"),
    ("keep_revisions: -1\n", "keep_revisions must be a whole number of at least 0, got -1"),
    ("keep_revisions: all\n", "keep_revisions must be a whole number of at least 0, got 'all'"),
    ("hub_dir: 3\n", "'hub_dir' must be a string, got 3"),
    ("- a\n- b\n", "a recipe is a mapping"),
    ("pretrain: [1]\n", "section 'pretrain' must be a mapping"),
    ("data: {text_sources: x\n", "not valid YAML"),
])
def test_bad_recipes_fail_with_one_line(tmp_path, text, message):
    with pytest.raises(PipelineError, match=message) as err:
        load_recipe(bad_recipe(tmp_path, text))
    assert "\n" not in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_wrong_type_in_a_stage_section_names_file_and_key(tmp_path):
    recipe = load_recipe(bad_recipe(tmp_path, "pretrain:\n  max_steps: many\n"))
    with pytest.raises(PipelineError, match="bad.yaml: section 'pretrain': argument --max_steps: invalid int value"):
        recipe.parse("pretrain")


def test_wrong_type_on_the_command_line(tmp_path):
    recipe = load_recipe(bad_recipe(tmp_path, "pretrain:\n  max_steps: 3\n"))
    with pytest.raises(PipelineError, match="command line: argument --max_steps: invalid int value"):
        recipe.parse("pretrain", ["--max_steps", "x"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(PipelineError, match="recipe file not found"):
        load_recipe(tmp_path / "none.yaml")


def test_data_fields_can_be_overridden_from_any_stage_command_line(tmp_path):
    recipe = load_recipe(bad_recipe(tmp_path, "data:\n  text_sources: [chitchat]\n"))
    data, _, training = recipe.parse_stage("pretrain", ["--text_sources", "a.txt", "b.txt", "--max_steps", "7"])
    assert data.text_sources == ["a.txt", "b.txt"]
    assert training.max_steps == 7


def test_naming_preference_files_redoes_only_the_stages_that_learn_from_them(tmp_path):
    path = tmp_path / "votes.yaml"
    path.write_text("data:\n  dialog_sources: [chitchat]\ndpo:\n  beta: 0.2\n")
    before = load_recipe(path)
    path.write_text("data:\n  dialog_sources: [chitchat]\n  preference_sources: [votes.jsonl]\ndpo:\n  beta: 0.2\n")
    after = load_recipe(path)
    assert [s for s in after.stages if after.fingerprint(s) != before.fingerprint(s)] == ["reward", "dpo"]
