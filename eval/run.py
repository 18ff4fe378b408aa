"""Evaluate a run's models on the held-out splits; writes report.json, report.md and plots.

    python eval/run.py --config recipes/smoke.yaml [--max_prompts 32]

Held-out data is what no stage trained on (minichatgpt/data/splits.py decides it by content id); the prompts are a
seeded sample spread over all held-out conversations, and every number comes with its standard error. The report goes to
{output_root}/{run_name}/eval/; the numbers also go into each model card's `model-index`, as a new revision.
"""

import json
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from minichatgpt.console import run_stage
from minichatgpt.evaluation.held_out import held_out
from minichatgpt.evaluation.policies import (
    POLICIES,
    SEED_PROMPT,
    compare_policies,
    held_out_pairs,
    perplexities,
    reward_accuracy,
    sample_table,
    seed_example,
)
from minichatgpt.evaluation.relevance import next_reply_recall
from minichatgpt.evaluation.report import render_markdown, summary_lines, update_model_cards, write_plots
from minichatgpt.feedback.labeler import recipe_labeler
from minichatgpt.hub import library_versions, read_metadata
from minichatgpt.model.loading import load_model, load_tokenizer, revision_folder


def main(recipe, overrides):
    data_args, args = recipe.parse_stage("eval", overrides)
    out = Path(recipe.output_dir("eval"))
    out.mkdir(parents=True, exist_ok=True)
    names = {stage: recipe.hub_path(stage) for stage in ("pretrain", "sft", "reward", "ppo", "dpo")
             if stage != "dpo" or recipe.hub_path(stage).is_dir()}
    paths = {stage: revision_folder(name) for stage, name in names.items()}
    policies = [stage for stage in POLICIES if stage in paths]
    report = {"run": recipe.run_name, "recipe": str(recipe.path), "models": {k: str(v) for k, v in names.items()},
              "library_versions": library_versions(),
              "rl_algorithm": read_metadata(paths["ppo"]).get("algorithm", "ppo")}
    items = held_out(recipe, data_args, args)
    report["held_out"] = items.summary
    tokenizer = load_tokenizer(paths["sft"], "SFT model's tokenizer")
    report["perplexity"] = perplexities(paths, tokenizer, items.texts, items.prompts, items.human_replies)
    reward_model = load_model(paths["reward"], AutoModelForSequenceClassification, "reward model", num_labels=1)
    eval_pairs, _ = held_out_pairs(recipe, data_args, items.dialogs)
    report["reward_model"] = reward_accuracy(reward_model, tokenizer, eval_pairs)
    labeler = recipe_labeler(recipe, data_args, items.dialogs[0]["messages"])
    if labeler is not None:
        report["labeler"] = labeler.name
        report["reward_model"]["agreement"] = read_metadata(paths["reward"]).get("agreement", {}).get("after")

    budget = AutoConfig.from_pretrained(paths["sft"]).max_position_embeddings - args.max_new_tokens
    models = {stage: load_model(paths[stage], AutoModelForCausalLM, f"{stage} model", tokenizer=tokenizer)
              for stage in ("sft", *policies)}
    comparisons, replies = compare_policies(
        models, reward_model, labeler, tokenizer, items.prompts, budget, args.max_new_tokens, args.strategies,
        args.seed, {"num_beams": args.num_beams, "repetition_penalty": args.repetition_penalty}, items.human_replies)
    report["seed_example"] = {"prompt": SEED_PROMPT, "replies": seed_example(models, tokenizer, args.max_new_tokens)}
    for policy, comparison in comparisons.items():
        report[f"sft_vs_{policy}"] = comparison
    report["next_reply_ranking"] = {stage: next_reply_recall(paths[stage], tokenizer, items.ranking)
                                    for stage in ("pretrain", "sft", *policies)}
    report["samples"] = sample_table(items.prompts, replies, models, list(report["sft_vs_ppo"]))
    report["plots"] = write_plots(paths, out)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    update_model_cards(recipe, report)
    print(f"report: {out / 'report.md'}")
    print("\n".join(summary_lines(report)))

if __name__ == "__main__":
    run_stage(main, __doc__)
