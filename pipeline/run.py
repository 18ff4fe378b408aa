"""From nothing to a chatbot: tokenizer -> pretrain -> SFT -> reward -> PPO [-> DPO] -> evaluation, in order.

    python pipeline/run.py --config recipes/quickstart.yaml [--force sft]

DPO runs only for a recipe with a `dpo:` section.

A stage whose hub folder exists and was made from the same recipe settings is skipped; --force STAGE redoes that
stage and every stage after it; an interrupted stage resumes from its last complete checkpoint when run again,
whatever older model the hub holds, or starts fresh (its checkpoints removed) when they were made with other settings
or before a model they build on was pushed.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from minichatgpt.errors import PipelineError
from minichatgpt.hub import format_metrics, read_metadata
from minichatgpt.recipe import STAGES, load_recipe
from minichatgpt.training.checkpoints import stale_checkpoints
from minichatgpt.training.defaults import trainer_defaults

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "tokenizer": "tokenizer/train.py",
    "pretrain": "pipeline/pretrain.py",
    "sft": "pipeline/sft.py",
    "reward": "pipeline/reward.py",
    "ppo": "pipeline/ppo.py",
    "dpo": "pipeline/dpo.py",
    "eval": "eval/run.py",
}
KEY_METRIC = {
    "tokenizer": "bytes_per_token",
    "pretrain": "eval_perplexity",
    "sft": "eval_reply_perplexity",
    "reward": "eval_accuracy",
    "ppo": "ppo_gold_win_rate",
    "dpo": "eval_preference_accuracy",
}
TRAINING_STAGES = ("pretrain", "sft", "reward", "ppo", "dpo")
RESUMING_STAGES = ("pretrain", "sft")  # they resume from their checkpoints and record the settings they ran with


def command(stage: str, recipe_path: Path, accelerate_config: Path) -> list[str]:
    script = str(ROOT / SCRIPTS[stage])
    if stage in TRAINING_STAGES:
        return [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file", str(accelerate_config), script,
                "--config", str(recipe_path)]
    return [sys.executable, script, "--config", str(recipe_path)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML file, e.g. recipes/quickstart.yaml")
    parser.add_argument("--force", choices=STAGES + ("eval",), help="redo this stage and every stage after it")
    parser.add_argument("--skip_eval", action="store_true", help="stop before the evaluation")
    args = parser.parse_args()
    recipe, accelerate_config = checked_recipe(args.config)
    stages = recipe.stages + (() if args.skip_eval else ("eval",))
    if args.force and args.force not in stages:
        print(f"error: --force {args.force}: {recipe.path} has no '{args.force}' section, so that stage does not run",
              file=sys.stderr)
        sys.exit(2)
    rerun_from = stages.index(args.force) if args.force else len(stages)
    summary, upstream_changed, total_start, newest_upstream = [], False, time.time(), ""
    for number, stage in enumerate(stages, start=1):
        tag = f"[{number}/{len(stages)}] {stage}"
        hub_folder = recipe.hub_path(stage) if stage != "eval" else Path(recipe.output_dir("eval")) / "report.md"
        meta = read_metadata(hub_folder) if stage != "eval" else {}
        # Up to date: made from these recipe settings, without overrides, after every stage it builds on.
        up_to_date = (stage != "eval" and meta.get("fingerprint") == recipe.fingerprint(stage)
                      and meta.get("created", "") >= newest_upstream)
        inputs_created, newest_upstream = newest_upstream, max(newest_upstream, meta.get("created", ""))
        forced = number - 1 >= rerun_from
        if up_to_date and not forced and not upstream_changed:
            print(f"{tag}: skipped, {hub_folder} is up to date with {recipe.path}", flush=True)
            summary.append((stage, hub_folder, meta.get("metrics", {}).get(KEY_METRIC.get(stage)), 0.0, "skipped"))
            continue
        overridden = json.loads(meta["fingerprint"]).get("overrides") if meta.get("fingerprint") else None
        if overridden:
            print(f"{tag}: {hub_folder} was made with settings on its command line ({' '.join(overridden)}) that "
                  f"{recipe.path} does not hold: it is redone from the recipe; name them there to keep them",
                  flush=True)
        output_dir = Path(recipe.output_dir(stage))
        # Checkpoints of other settings or inputs must not be resumed (a resuming stage would refuse them); those
        # made with these settings are resumed whatever older model the hub holds.
        fresh_because = stage in TRAINING_STAGES and output_dir.exists() and (
            "--force" if forced else "a stage it builds on was redone" if upstream_changed
            else stale_checkpoints(output_dir, recipe.fingerprint(stage), inputs_created) if stage in RESUMING_STAGES
            else f"{hub_folder} is out of date" if meta else None)
        if fresh_because:
            shutil.rmtree(output_dir)
            print(f"{tag}: starting fresh, {output_dir} removed: {fresh_because}", flush=True)
        else:
            print(f"{tag}: starting", flush=True)
        start = time.time()
        result = subprocess.run(command(stage, recipe.path, accelerate_config), cwd=Path.cwd())
        seconds = time.time() - start
        if result.returncode != 0:
            again = ("resumes from its last checkpoint, if it saved one" if stage in RESUMING_STAGES
                     else "starts over (it saves no checkpoints)" if stage in TRAINING_STAGES else "runs again")
            print(f"{tag}: failed after {seconds:.0f}s (exit {result.returncode}); fix the cause above and run the "
                  f"same command again: finished stages are skipped and this one {again}", file=sys.stderr)
            sys.exit(result.returncode)
        print(f"{tag}: done in {seconds:.0f}s", flush=True)
        upstream_changed = True
        metric = read_metadata(hub_folder).get("metrics", {}).get(KEY_METRIC.get(stage)) if stage != "eval" else None
        summary.append((stage, hub_folder, metric, seconds, "ran"))
    print_closing(recipe, stages, summary, time.time() - total_start)


def checked_recipe(path: str):
    """The recipe with every section parsed (a typo anywhere stops the run before the first stage), and its
    accelerate config; a bad one ends the run with one line and exit status 2."""
    try:
        recipe = load_recipe(path)
        for section in recipe.sections:
            recipe.parse(section, defaults=trainer_defaults() if section in TRAINING_STAGES else None)
        accelerate_config = Path(recipe.run.accelerate_config)
        if not accelerate_config.is_file():
            raise PipelineError(f"{recipe.path}: accelerate_config '{accelerate_config}' not found")
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return recipe, accelerate_config


def print_closing(recipe, stages, summary: list[tuple], seconds_in_all: float):
    """Each stage's result, key metric and time; the seed's example from the report; how to chat."""
    print(f"\n{'stage':10} {'result':36} {'key metric':28} {'time':>7}")
    for stage, folder, metric, seconds, how in summary:
        key = format_metrics({KEY_METRIC[stage]: metric}) if metric is not None else "-"
        print(f"{stage:10} {str(folder):36} {key:28} {seconds:6.0f}s {'' if how == 'ran' else '(skipped)'}")
    print(f"total {seconds_in_all:.0f}s")
    report = Path(recipe.output_dir("eval")) / "report.json"
    if "eval" in stages and report.is_file():
        example = json.loads(report.read_text(encoding="utf-8"))["seed_example"]
        print(f"\n\"{example['prompt']}\"")
        for stage, replies in example["replies"].items():
            for decoding, text in replies.items():
                print(f"  {stage:4} {decoding:7} {text}")
    print(f"\nchat with it:  python pipeline/chat.py --model {recipe.hub_path('ppo')}")


if __name__ == "__main__":
    main()
