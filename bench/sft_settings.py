"""SFT settings compared from one base model: each variant trains with the SFT stage's own code from the run's base
model and is scored on the held-out dialogs, every variant paired against the first on the same contexts and prompts,
so that a difference can be told from noise.

    python pipeline/run.py --config recipes/quickstart.yaml --skip_eval     # once: the run's base model
    python bench/sft_settings.py --config recipes/quickstart.yaml --variants "" "--max_steps 900" "--learning_rate 1e-3"

Each variant is `pipeline/sft.py --config <copy> --base_model <the run's base> <its overrides>`, from scratch, on a
copy of the recipe named {run}-sft{i} whose hub is {output_root}/{run}/sft_settings/hub: the run's own models are never
written. Per variant: the stage's training seconds, held-out reply perplexity on the evaluation's prompts,
next-reply recall@1 of 10 by PMI on `--ranking_contexts` held-out contexts, and the reply specificity of the chat's
default decoding (`sample`) on the evaluation's prompts; for each variant after the first, its paired difference from
the first in recall and specificity, with standard errors.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, set_seed

from minichatgpt.data.splits import dialog_splits, sample_pairs
from minichatgpt.errors import PipelineError
from minichatgpt.evaluation.policies import decoded_reply_ids, perplexity_row
from minichatgpt.evaluation.relevance import next_reply_recall, ranking_rows, reply_specificity
from minichatgpt.generation import reply_texts
from minichatgpt.model.loading import load_model, load_tokenizer
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults

from stage_variants import paired, train_variants


class HeldOut:
    """The evaluation's prompts and their real replies, and the ranking contexts, the same for every variant."""

    def __init__(self, recipe, ranking_contexts: int):
        data_args, self.eval_args = recipe.parse_stage("eval", [])
        ppo_args, _ = recipe.parse("ppo", defaults=trainer_defaults())
        held_out = dialog_splits(data_args)[1]["messages"]
        pairs = sample_pairs(held_out, ppo_args.context_turns, self.eval_args.max_prompts, data_args.split_seed)
        self.prompts, self.human_replies = [h for _, h, _ in pairs], [r for _, _, r in pairs]
        self.rows = ranking_rows(held_out, ppo_args.context_turns, max_contexts=ranking_contexts,
                                 seed=data_args.split_seed)

    def score(self, folder: Path) -> dict:
        tokenizer = load_tokenizer(folder, "SFT model's tokenizer")
        model = load_model(folder, AutoModelForCausalLM, "SFT model", tokenizer=tokenizer)
        contexts = [tokenizer.apply_chat_template(h, add_generation_prompt=True, tokenize=False) for h in self.prompts]
        perplexity = perplexity_row(folder, [f"{r}<|end|>" for r in self.human_replies], contexts)
        ranking = next_reply_recall(folder, tokenizer, self.rows, per_context=True)
        set_seed(self.eval_args.seed)
        budget = model.config.max_position_embeddings - self.eval_args.max_new_tokens
        _, reply_ids = decoded_reply_ids(model, tokenizer, self.prompts, "sample", {}, budget,
                                         self.eval_args.max_new_tokens)
        replies = reply_texts(tokenizer, reply_ids)
        specificity = reply_specificity(self.prompts, replies, self.human_replies, per_reply=True)
        return {"reply_perplexity": perplexity["perplexity"], "reply_perplexity_se": perplexity["se"],
                "recall_at_1_pmi": ranking["recall_at_1_pmi"], "recall_at_1_pmi_se": ranking["recall_at_1_pmi_se"],
                "hits_pmi": ranking["hits_pmi"], "specificity": specificity["specificity"],
                "specificity_se": specificity["specificity_se"], "specificity_scores": specificity["scores"],
                "reply_words": statistics.fmean(len(r.split()) for r in replies)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/quickstart.yaml", help="the run whose base model to fine-tune")
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="SFT overrides per variant, each one quoted string (\"\" is the recipe's own settings)")
    parser.add_argument("--ranking_contexts", type=int, default=800, help="held-out contexts for recall@1 by PMI")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    try:
        recipe = load_recipe(args.config)
        held_out = HeldOut(recipe, args.ranking_contexts)
        rows = train_variants(recipe, "sft", args.variants, held_out.score,
                              arguments=("--base_model", str(recipe.hub_path("pretrain").absolute())))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    first = rows[0]
    print(f"\n{len(held_out.rows)} ranking contexts, {len(held_out.prompts)} prompts; differences are paired, from the "
          "first variant\n\n| variant | train s | reply perplexity | recall@1 by PMI | difference | specificity "
          "(sample) | difference | words |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        row["recall_difference"], row["recall_difference_se"] = paired(row["hits_pmi"], first["hits_pmi"])
        row["specificity_difference"], row["specificity_difference_se"] = paired(row["specificity_scores"],
                                                                                 first["specificity_scores"])
        print(f"| {row['variant']} | {row['train_seconds']:.0f} | {row['reply_perplexity']:.1f} ± "
              f"{row['reply_perplexity_se']:.1f} | {row['recall_at_1_pmi']:.3f} ± {row['recall_at_1_pmi_se']:.3f} | "
              f"{row['recall_difference']:+.3f} ± {row['recall_difference_se']:.3f} | {row['specificity']:.3f} ± "
              f"{row['specificity_se']:.3f} | {row['specificity_difference']:+.3f} ± "
              f"{row['specificity_difference_se']:.3f} | {row['reply_words']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": str(recipe.path), "ranking_contexts": len(held_out.rows),
                                               "prompts": len(held_out.prompts), "variants": rows}, indent=2),
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
