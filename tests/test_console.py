"""Our own settings print no deprecation warning: the training arguments every stage builds from a recipe."""

import warnings
from pathlib import Path

import pytest

from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults

ROOT = Path(__file__).resolve().parent.parent
TRAINING_SECTIONS = ("pretrain", "sft", "reward", "ppo", "dpo")


@pytest.mark.parametrize("section", TRAINING_SECTIONS)
def test_training_arguments_raise_no_future_warning(section):
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        parsed = recipe.parse(section, defaults=trainer_defaults())
    training_args = [args for args in parsed if hasattr(args, "activation_checkpointing")]
    assert training_args, section
    # TRL's configs default to `gradient_checkpointing=True` (the deprecated alias); the stages turn it off.
    assert all(args.activation_checkpointing is False for args in training_args)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_group_trainer_arguments_raise_no_future_warning(algorithm):
    from minichatgpt.training.rl import group_config

    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        stage_args, config = recipe.parse("ppo", ["--algorithm", algorithm], defaults=trainer_defaults(kl_coef=0.05))
        group = group_config(config, stage_args, reward_weights=[1.0])
    assert group.activation_checkpointing is False and group.beta == 0.05 and group.num_generations == 4


@pytest.mark.parametrize("key", ["activation_checkpointing", "gradient_checkpointing"])
def test_a_recipe_can_still_turn_checkpointing_on(tmp_path, key):
    path = tmp_path / "ckpt.yaml"
    path.write_text((ROOT / "recipes" / "smoke.yaml").read_text() + "\n", encoding="utf-8")
    recipe = load_recipe(path)
    recipe.sections["sft"][key] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name warns, as transformers means it to
        _, config, _ = recipe.parse("sft", defaults=trainer_defaults())
        _, from_cli, _ = load_recipe(path).parse("sft", [f"--{key}", "true"], defaults=trainer_defaults())
    assert config.activation_checkpointing is True and from_cli.activation_checkpointing is True
