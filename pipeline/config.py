"""Recipes: one YAML file per run, one section per stage, parsed into the stages' argument dataclasses.

A recipe's stage sections hold exactly the fields of that stage's dataclasses (TRL/transformers config classes plus
a small one of ours), so a typo, a wrong type or a missing file fails before any work starts.
"""

import difflib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments
from trl import ModelConfig, RewardConfig, SFTConfig

from pipeline.errors import PipelineError
from pipeline.hub import DEFAULT_KEEP_REVISIONS, check_keep_revisions, check_name, hub_path

STAGES = ("tokenizer", "pretrain", "sft", "reward", "ppo")


@dataclass
class DataArguments:
    text_sources: list[str] = field(
        default_factory=lambda: ["chitchat"],
        metadata={"help": "Pretraining/tokenizer text: files, folders, globs, 'wikitext:<file>', 'hub:<id>[:<config>]', "
                  "'disk:<folder>' or 'chitchat'. See docs/data.md."},
    )
    dialog_sources: list[str] = field(
        default_factory=lambda: ["chitchat"],
        metadata={"help": "Dialogs for SFT, reward pairs and PPO prompts: 'chitchat', 'cornell:<folder>', chat or "
                  "prompt/completion JSONL/JSON/Parquet files, 'hub:<id>[:<config>]'."},
    )
    preference_sources: list[str] = field(
        default_factory=list,
        metadata={"help": "Preference files {prompt, chosen, rejected}; empty means pairs are built from the dialogs."},
    )
    text_column: str = field(default="text", metadata={"help": "Text column of JSON/CSV/Parquet/disk/hub sources."})
    encoding: str = field(
        default="auto",
        metadata={"help": "Encoding of text, JSON, CSV and Cornell files: 'auto' (UTF-8; ISO-8859-1 for cornell: "
                  "folders, the original corpus's encoding), utf-8, latin-1 or another Python codec name."},
    )
    text_unit: Literal["paragraph", "line", "file"] = field(
        default="paragraph",
        metadata={"help": "One document per paragraph (blank-line separated), per line, or per file in .txt/.raw/.md."},
    )
    max_documents_per_source: int | None = field(
        default=None, metadata={"help": "Keep at most this many documents/conversations of each source."}
    )
    eval_fraction: float = field(
        default=0.05, metadata={"help": "Share of documents and conversations held out, drawn from each one's content "
                                "id: the same in every stage, whatever the mix of sources."})
    max_eval_examples: int = field(
        default=200, metadata={"help": "Held-out documents (and conversations) evaluated; held-out ones past it are "
                               "used nowhere."})
    split_seed: int = field(
        default=1234, metadata={"help": "Seed of the held-out draw and of the samples of held-out prompts."})
    max_bad_fraction: float = field(
        default=0.1, metadata={"help": "Fail when more than this share of a source's rows is malformed."}
    )


@dataclass
class ModelShapeArguments:
    n_layer: int = field(default=4, metadata={"help": "Transformer blocks."})
    n_embd: int = field(default=256, metadata={"help": "Width of the residual stream."})
    n_head: int = field(default=4, metadata={"help": "Attention heads; must divide n_embd."})
    n_positions: int = field(default=256, metadata={"help": "Context length in tokens."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout of embeddings, attention and residuals."})


@dataclass
class TokenizerArguments:
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair count for a BPE merge."})


@dataclass
class PretrainArguments:
    pad_vocab_to_multiple_of: int = field(
        default=64, metadata={"help": "Round the embedding matrix up to a multiple of this (faster matmuls)."}
    )
    max_eval_blocks: int | None = field(default=None, metadata={"help": "Cap on held-out blocks evaluated."})
    causal_attention: bool = field(
        default=True,
        metadata={"help": "Run attention as SDPA's causal kernel with no mask (FlashAttention/cuDNN on GPUs), also "
                  "under torch.compile; valid because packed blocks have no padding."},
    )
    loss_only_in_training: bool = field(
        default=True,
        metadata={"help": "Training forwards return only the loss: no full-vocabulary logits copied to fp32 and no "
                  "key/value cache built every step. Evaluation and generation are unchanged."},
    )


@dataclass
class SFTArguments:
    base_model: str | None = field(
        default=None, metadata={"help": "Model folder or hub id to fine-tune; default {hub_dir}/{run_name}-base."}
    )
    max_turns: int = field(
        default=8, metadata={"help": "Long conversations are cut into windows of at most this many turns."}
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: ["hi , how are you ?", "what do you do for fun ?", "do you like movies ?"],
        metadata={"help": "Prompts decoded greedily at the end and shown on the model card."},
    )


@dataclass
class RewardArguments:
    rejected_kinds: list[str] = field(
        default_factory=lambda: ["other_conversation", "truncated", "shuffled", "looped", "generic"],
        metadata={"help": "How rejected replies are made when there are no preference files."},
    )
    rejected_weights: list[float] | None = field(
        default=None, metadata={"help": "Mix of rejected_kinds (same order); default: equal."}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Cap on training pairs."})
    built_per_preference: float = field(
        default=0.0, metadata={"help": "With data.preference_sources: pairs built from the dialogs added to training "
                                       "per preference pair (0: the preference files only)."}
    )
    eval_pairs: int = field(default=1000, metadata={"help": "Cap on held-out pairs the accuracy is measured on."})
    context_turns: int | None = field(
        default=None, metadata={"help": "Turns before the reply that the reward model sees, the last the user's; "
                                "default: ppo.context_turns, the contexts the RL stage gives it to score."}
    )


@dataclass
class PPOArguments:
    max_prompt_length: int = field(default=96, metadata={"help": "Prompt tokens kept (oldest turns dropped first)."})
    context_turns: int = field(default=3, metadata={"help": "Turns of conversation in a prompt, ending at a user's."})
    max_prompts: int | None = field(default=None, metadata={"help": "Cap on training prompts."})
    compare_prompts: int = field(default=64, metadata={"help": "Held-out prompts for the final SFT vs PPO comparison."})
    guard_prompts: int = field(default=32, metadata={"help": "Fixed prompts decoded at each log to watch for collapse."})
    max_kl: float = field(default=20.0, metadata={"help": "Stop when the KL to the SFT policy exceeds this."})
    algorithm: Literal["ppo", "rloo"] = field(
        default="ppo", metadata={"help": "ppo: trl.experimental.ppo.PPOTrainer; rloo: trl.RLOOTrainer (REINFORCE with a "
                                 "leave-one-out baseline, no value model). Both push {run_name}-ppo."}
    )
    rloo_num_generations: int = field(
        default=4, metadata={"help": "RLOO: replies sampled per prompt; each is judged against the mean of the others."}
    )
    reward_model_weight: float = field(default=1.0, metadata={"help": "Weight of the reward model's score."})
    normalize_reward_model: bool = field(
        default=True, metadata={"help": "Standardise the reward model's score by its mean and std over warm-up "
                                "rollouts of the SFT policy (reward_scale_rollouts), gathered from every process."}
    )
    reward_scale_rollouts: int = field(
        default=256, metadata={"help": "Warm-up replies of the SFT policy, one per training prompt, sampled as the "
                               "rollouts are, whose reward-model scores set the standardisation."}
    )
    reward_model_clip: float | None = field(
        default=None, metadata={"help": "Clip the standardised reward-model score to [-clip, clip], so that no reply "
                                "earns more than that many standard deviations by exploiting the reward model."}
    )
    repetition_weight: float = field(
        default=1.0, metadata={"help": "Weight of the repetition penalty: minus the share of repeated token n-grams."}
    )
    repetition_ngram: int = field(default=3, metadata={"help": "n of the repetition penalty's n-grams."})
    relevance_weight: float = field(
        default=0.5, metadata={"help": "Weight of the relevance bonus: per-token log p(reply | context) - log p(reply | "
                               "empty prompt) under the SFT model."}
    )
    kl_target: float | None = field(
        default=None, metadata={"help": "KL budget: above it kl_coef grows, below it shrinks (adaptive KL controller); "
                                "None keeps kl_coef fixed."}
    )
    kl_adapt_rate: float = field(
        default=0.1, metadata={"help": "Largest relative change of kl_coef per log step under kl_target."}
    )


@dataclass
class EvalArguments:
    max_prompts: int = field(
        default=500, metadata={"help": "Held-out prompts decoded per policy and strategy, sampled over all held-out "
                               "conversations; 500 puts the standard error of a specificity gain near 0.02, so that "
                               "a gain of 0.05 is at least two of them."})
    max_new_tokens: int = field(default=32, metadata={"help": "Reply length cap."})
    num_beams: int = field(default=4, metadata={"help": "Beams for the beam-search comparison."})
    repetition_penalty: float = field(default=1.2, metadata={"help": "Repetition penalty used with beam search."})
    ranking_contexts: int = field(
        default=200, metadata={"help": "Held-out contexts for next-reply recall@1 (each with 10 candidate replies)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled decodings (chat default and mmi)."})


@dataclass
class RecipeArguments:
    run_name: str | None = field(default=None, metadata={"help": "Run name; default: the recipe file's name."})
    hub_dir: str = field(default="hub", metadata={"help": "Local model hub folder."})
    output_root: str = field(default="runs", metadata={"help": "Trainer checkpoints go to {output_root}/{run_name}/{stage}."})
    accelerate_config: str = field(default="accelerate_config.yaml", metadata={"help": "Used by pipeline/run.py."})
    keep_revisions: int = field(
        default=DEFAULT_KEEP_REVISIONS,
        metadata={"help": "Older revisions of each hub model kept under {hub_dir}/.revisions/{name}/ besides the "
                  "current one; older ones are deleted after each push. 0 keeps only the current one, and a process "
                  "loading the model while it is replaced may then find its files gone."},
    )


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
    "eval": lambda: (EvalArguments,),
}
TOP_LEVEL_KEYS = {f.name for f in fields(RecipeArguments)}


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

    def hub_name(self, stage: str) -> str:
        return f"{self.run_name}-{'base' if stage == 'pretrain' else stage}"

    def hub_path(self, stage: str) -> Path:
        return hub_path(self.run.hub_dir, self.hub_name(stage))

    def output_dir(self, stage: str) -> str:
        return str(Path(self.run.output_root) / self.run_name / stage)

    def parse(self, section: str, cli_args: list[str] | None = None, defaults: dict | None = None):
        """The section's dataclasses: the stage's `defaults`, overridden by the recipe, overridden by `cli_args`."""
        asked = self.sections.get(section) or {}
        values = {**(defaults or {}), **asked}
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

    def parse_stage(self, section: str, overrides: list[str], defaults: dict | None = None):
        """The data arguments and the section's dataclasses; command-line flags of data fields go to the data."""
        data_argv, section_argv = _split_argv(overrides, _known_keys("data"))
        return (*self.parse("data", data_argv), *self.parse(section, section_argv, defaults))

    def reward_context_turns(self, reward_args: RewardArguments) -> int:
        """The turns before a reply that the reward model sees: its own setting, else those of the RL stage's
        prompts, which it will score."""
        if reward_args.context_turns is not None:
            return reward_args.context_turns
        return (self.sections.get("ppo") or {}).get("context_turns", PPOArguments.context_turns)

    def fingerprint(self, stage: str, overrides: list[str] = ()) -> str:
        """What a stage's result depends on: its own section, the shared ones and the command-line overrides it ran
        with (used to skip finished stages)."""
        shared = {k: self.sections.get(k) for k in ("data", "model", "tokenizer")}
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
    (data,) = recipe.parse("data")
    if not 0 < data.eval_fraction < 1:
        raise PipelineError(f"{recipe.path}: data.eval_fraction must be between 0 and 1, got {data.eval_fraction}")


def _suggest(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
