"""Recipes: one YAML file per run, one section per stage, parsed into the stages' argument dataclasses.

A recipe's stage sections hold exactly the fields of that stage's dataclasses (TRL/transformers config classes plus
a small one of ours), so a typo, a wrong type or a missing file fails before any work starts.
"""

import difflib
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments
from trl import DPOConfig, ModelConfig, RewardConfig, SFTConfig

from minichatgpt.arguments import (
    DataArguments,
    DPOArguments,
    EvalArguments,
    ModelShapeArguments,
    PPOArguments,
    PretrainArguments,
    RecipeArguments,
    RewardArguments,
    SFTArguments,
    TokenizerArguments,
)
from minichatgpt.errors import PipelineError
from minichatgpt.hub import check_keep_revisions, check_name, hub_path, read_metadata

# dpo runs only for a recipe with a `dpo:` section (Recipe.stages); it needs the SFT model and the reward stage's
# pair settings, not the RL stage.
STAGES = ("tokenizer", "pretrain", "sft", "reward", "ppo", "dpo")
# The hub models each stage (and the evaluation) reads, whose held-out split must be its own.
BUILDS_ON = {"pretrain": ("tokenizer",), "sft": ("pretrain",), "reward": ("sft",), "ppo": ("sft", "reward"),
             "dpo": ("sft",), "eval": ("pretrain", "sft", "reward", "ppo")}
OPTIONAL_STAGES = ("dpo",)


def split_settings(data_args) -> dict:
    """What decides which documents and conversations are held out (recorded in every model a stage pushes)."""
    return {"split_seed": data_args.split_seed, "eval_fraction": data_args.eval_fraction}


def _ppo_config_class():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig

    return PPOConfig


SECTIONS = {
    "data": lambda: (DataArguments,),
    "model": lambda: (ModelShapeArguments,),
    "tokenizer": lambda: (TokenizerArguments,),
    "pretrain": lambda: (PretrainArguments, TrainingArguments),
    "sft": lambda: (SFTArguments, SFTConfig, ModelConfig),
    "reward": lambda: (RewardArguments, RewardConfig),
    "ppo": lambda: (PPOArguments, _ppo_config_class()),
    "dpo": lambda: (DPOArguments, DPOConfig),
    "eval": lambda: (EvalArguments,),
}
TOP_LEVEL_KEYS = {f.name for f in fields(RecipeArguments)}
PRECISIONS = ("auto", "bf16", "fp32")


class _RaisingParser(HfArgumentParser):
    def error(self, message):
        raise PipelineError(re.sub(r"(--\w+)/--[\w-]+", r"\1", message))


def _parser(section: str) -> HfArgumentParser:
    return _RaisingParser(SECTIONS[section](), add_help=False)


def _known_keys(section: str) -> set[str]:
    return {f.name for cls in SECTIONS[section]() for f in fields(cls) if f.init}


def _to_argv(values: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def _split_argv(argv: list[str], keys: set[str]) -> tuple[list[str], list[str]]:
    """Split `--key value...` groups into those whose key is in `keys` and the rest."""
    mine, rest, target = [], [], None
    for token in argv:
        if token.startswith("--"):
            target = mine if token[2:].split("=")[0] in keys else rest
        (target if target is not None else rest).append(token)
    return mine, rest


@dataclass
class Recipe:
    path: Path
    run: RecipeArguments
    sections: dict

    @property
    def run_name(self) -> str:
        return self.run.run_name

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this recipe runs, in order: the optional ones only when it has their section."""
        return tuple(s for s in STAGES if s not in OPTIONAL_STAGES or s in self.sections)

    def hub_name(self, stage: str) -> str:
        return f"{self.run_name}-{'base' if stage == 'pretrain' else stage}"

    def hub_path(self, stage: str) -> Path:
        return hub_path(self.run.hub_dir, self.hub_name(stage))

    def output_dir(self, stage: str) -> str:
        return str(Path(self.run.output_root) / self.run_name / stage)

    def parse(self, section: str, cli_args: list[str] | None = None, defaults: dict | None = None):
        """The section's dataclasses: the stage's `defaults`, overridden by the recipe, overridden by `cli_args`."""
        asked = self.sections.get(section) or {}
        values = {**(defaults or {}), **self._precision(section), **asked}
        cli_keys = {a[2:].split("=")[0] for a in cli_args or [] if a.startswith("--")}
        if "gradient_checkpointing" in {*asked, *cli_keys} and "activation_checkpointing" not in {*asked, *cli_keys}:
            # transformers reads the deprecated alias only while `activation_checkpointing` is unset, so a stage
            # default of the new name would silently override the old name a recipe or command line still uses.
            values.pop("activation_checkpointing", None)
        if "output_dir" in _known_keys(section) and not values.get("output_dir"):
            values["output_dir"] = self.output_dir(section)
        if "project" in _known_keys(section):
            # Trackers that group runs (trackio, with `report_to: [trackio]`) file each stage as a run of the recipe's
            # project, not as a randomly named run of transformers' catch-all project "huggingface".
            values.setdefault("project", self.run_name)
            values.setdefault("run_name", section)
        parser = _parser(section)
        recipe_argv = _to_argv(values)
        try:
            parser.parse_args_into_dataclasses(args=recipe_argv, look_for_args_file=False)
        except PipelineError as err:
            raise PipelineError(f"{self.path}: section '{section}': {err}") from None
        except (ValueError, TypeError) as err:
            raise PipelineError(f"{self.path}: section '{section}': {err}") from None
        try:
            parsed = parser.parse_args_into_dataclasses(args=recipe_argv + list(cli_args or []), look_for_args_file=False)
        except PipelineError as err:
            raise PipelineError(f"command line: {err}") from None
        except (ValueError, TypeError) as err:
            raise PipelineError(f"{self.path} + command line: section '{section}': {err}") from None
        return parsed

    def _precision(self, section: str) -> dict:
        if self.run.precision == "auto" or "bf16" not in _known_keys(section):
            return {}
        return {"bf16": self.run.precision == "bf16", "fp16": False}

    def parse_stage(self, section: str, overrides: list[str], defaults: dict | None = None):
        """The data arguments and the section's dataclasses; command-line flags of data fields go to the data. A
        hub model the stage builds on that was made with another held-out split is refused: the stage would train
        on what that model held out, or hold out what it trained on."""
        data_argv, section_argv = _split_argv(overrides, _known_keys("data"))
        (data_args,) = self.parse("data", data_argv)
        split = split_settings(data_args)
        for stage in BUILDS_ON.get(section, ()):
            made_with = read_metadata(self.hub_path(stage)).get("data_split")
            if made_with and made_with != split:
                raise PipelineError(
                    f"{self.hub_path(stage)}: made with the held-out split {made_with}, where this {section} run has "
                    f"{split}; run it with the same data.split_seed and data.eval_fraction, or redo {stage} first")
        return (data_args, *self.parse(section, section_argv, defaults))

    def reward_context_turns(self, reward_args: RewardArguments) -> int:
        """The turns before a reply that the reward model sees: its own setting, else those of the RL stage's
        prompts, which it will score."""
        if reward_args.context_turns is not None:
            return reward_args.context_turns
        return (self.sections.get("ppo") or {}).get("context_turns", PPOArguments.context_turns)

    def fingerprint(self, stage: str, overrides: list[str] = ()) -> str:
        """What a stage's result depends on: its own section, the shared ones and the command-line overrides it ran
        with (used to skip finished stages)."""
        shared = {k: self.sections.get(k) for k in ("data", "model", "tokenizer")} | {"precision": self.run.precision}
        if stage not in ("reward", "dpo") and "preference_sources" in (shared["data"] or {}):
            # Only the stages that learn from preferences read them: naming votes redoes the reward model and what
            # follows it, not the tokenizer, pretraining and SFT.
            shared["data"] = {k: v for k, v in shared["data"].items() if k != "preference_sources"}
        if stage in ("reward", "dpo"):
            # The reward stage's pairs are made from its section, the contexts it scores and, for the labeler's
            # comparisons, replies as long as the RL stage's; DPO trains on the same pairs.
            reward = self.sections.get("reward") or {}
            shared["pairs"] = {**reward, "context_turns": self.reward_context_turns(
                RewardArguments(context_turns=reward.get("context_turns"))),
                "response_length": (self.sections.get("ppo") or {}).get("response_length")}
        return json.dumps({"shared": shared, stage: self.sections.get(stage), "overrides": list(overrides)},
                          sort_keys=True, default=str)


def load_recipe(path: str | os.PathLike) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: recipe file not found (pass --config recipes/<name>.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: a recipe is a mapping of keys to values, got {type(raw).__name__}")
    top = {}
    sections = {}
    for key, value in raw.items():
        if key in TOP_LEVEL_KEYS:
            top[key] = value
        elif key in SECTIONS:
            if value is not None and not isinstance(value, dict):
                raise PipelineError(f"{path}: section '{key}' must be a mapping of keys, got {type(value).__name__}")
            sections[key] = value or {}
        else:
            expected = sorted(TOP_LEVEL_KEYS | set(SECTIONS))
            raise PipelineError(f"{path}: unknown key '{key}'{_suggest(key, expected)}; expected one of {expected}")
    for section, values in sections.items():
        known = _known_keys(section)
        for key in values:
            if key not in known:
                names = "/".join(cls.__name__ for cls in SECTIONS[section]())
                raise PipelineError(
                    f"{path}: unknown key '{section}.{key}'{_suggest(key, known)}; a '{section}' section takes the "
                    f"fields of {names}"
                )
    for key, value in top.items():
        if key == "keep_revisions":
            try:
                check_keep_revisions(value)
            except PipelineError as err:
                raise PipelineError(f"{path}: {err}") from None
        elif value is not None and not isinstance(value, str):
            raise PipelineError(f"{path}: '{key}' must be a string, got {value!r}")
        elif key == "precision" and value not in PRECISIONS:
            raise PipelineError(f"{path}: precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    run = RecipeArguments(**top)
    if not run.run_name:
        run.run_name = path.stem
    check_name(run.run_name, what=f"{path}: run_name")
    recipe = Recipe(path=path, run=run, sections=sections)
    _check_values(recipe)
    return recipe


def _check_values(recipe: Recipe):
    """Values the dataclasses cannot check by type: the model shape and the held-out share."""
    (shape,) = recipe.parse("model")
    for name in ("n_layer", "n_embd", "n_head", "n_positions"):
        if getattr(shape, name) <= 0:
            raise PipelineError(f"{recipe.path}: model.{name} must be a positive integer, got {getattr(shape, name)}")
    if shape.n_embd % shape.n_head:
        raise PipelineError(
            f"{recipe.path}: model.n_head ({shape.n_head}) must divide model.n_embd ({shape.n_embd})"
        )
    recipe.parse("data")


def _suggest(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
