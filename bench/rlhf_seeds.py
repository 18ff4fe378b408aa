"""RL over seeds: runs the real RL stage (pipeline/ppo.py) or the DPO stage (pipeline/dpo.py) from the same SFT and
reward models with several seeds for each algorithm, evaluates every resulting policy on the held-out dialogs, and
prints the numbers per seed and as mean ± std, so that a gain over SFT can be told from noise.

    python bench/rlhf_seeds.py                                                # after the quickstart run
    python bench/rlhf_seeds.py --recipe recipes/smoke.yaml --seeds 2 --algorithms rloo --json seeds.json
    python bench/rlhf_seeds.py --algorithms rloo grpo dpo --first_seed 4       # seeds 4, 5, 6
    python bench/rlhf_seeds.py --algorithms ppo --seeds 1 --overrides "--missing_eos_penalty 0"

Each run is `pipeline/ppo.py --seed S --algorithm A` (for dpo: `pipeline/dpo.py --seed S`, its `dpo:` section or
DPOConfig's defaults) on a copy of the recipe whose run_name is {run}-{A}-s{S} and whose hub is
{output_root}/{run}/rlhf_seeds/hub (the run's SFT and reward models linked in), so the run's own hub is never
written. Per policy, on every held-out prompt (greedy replies, eval.max_new_tokens; `--prompts` for fewer): the
labeler's win rate against SFT, greedy and at the chat's decoding (the gold judge whose rankings the reward model
learned), reward-model win rate against SFT, next-reply recall@1 of 10 under the policy's likelihood (`--ranking_contexts`),
reply specificity and echo rate under an independent sentence-embedding model, the specificity gain over SFT on the
same prompts with its standard error (paired: one seed's gain is noise unless it is well above that), repeated-3-gram
rate, distinct-2, reply length in words, and the final KL to SFT the RL stage logged (n/a for dpo, which samples
nothing).
"""

import argparse
import copy
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

from minichatgpt.data.splits import dialog_splits, sample_pairs
from minichatgpt.errors import PipelineError
from minichatgpt.evaluation.metrics import load_metric
from minichatgpt.evaluation.relevance import next_reply_recall, ranking_rows, reply_specificity
from minichatgpt.feedback.labeler import recipe_labeler
from minichatgpt.generation import ended, generate_reply_ids, scored_replies
from minichatgpt.model.loading import load_model, load_tokenizer
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults

from stage_variants import run_stage_script, variant_recipe

RL_ALGORITHMS = ("ppo", "rloo", "grpo")
FIELDS = ("gold_win_rate", "gold_win_rate_sample", "win_rate", "recall_at_1", "specificity", "specificity_gain",
          "specificity_gain_se", "echo_rate", "repeated_3gram", "distinct_2", "reply_words", "reply_words_sample",
          "final_kl")


def run_policy_stage(recipe, work: Path, algorithm: str, seed: int, overrides: list[str]) -> tuple[str, str]:
    """Train one policy from the run's SFT and reward models (the stage's settings `overrides` on top of the
    recipe's); returns its run name and the stage whose hub folder holds it."""
    name = f"{recipe.run_name}-{algorithm}-s{seed}"
    path = variant_recipe(recipe, work, name, linked_stages=("sft", "reward"), copied_outputs=("comparisons",))
    stage = "dpo" if algorithm == "dpo" else "ppo"
    run_stage_script(stage, path, ["--seed", str(seed), *(["--algorithm", algorithm] if stage == "ppo" else []),
                                   *overrides], f"{algorithm} seed {seed}")
    return name, stage


class Evaluator:
    """Everything that is the same for every policy: held-out prompts and their real replies, ranking candidates,
    the reward model, the SFT policy's replies and scores."""

    def __init__(self, recipe, prompts: int | None, ranking_contexts: int):
        data_args, eval_args = recipe.parse_stage("eval", [])
        ppo_args, _ = recipe.parse("ppo", defaults=trainer_defaults())
        train, held_out = (split["messages"] for split in dialog_splits(data_args))
        self.labeler = recipe_labeler(recipe, data_args, train)
        pairs = sample_pairs(held_out, ppo_args.context_turns, prompts, data_args.split_seed)
        self.prompts, self.human_replies = [h for _, h, _ in pairs], [r for _, _, r in pairs]
        self.rows = ranking_rows(held_out, ppo_args.context_turns, max_contexts=ranking_contexts,
                                 seed=data_args.split_seed)
        self.sft_path = recipe.hub_path("sft")
        self.tokenizer = load_tokenizer(self.sft_path, "SFT model's tokenizer")
        self.reward_model = load_model(recipe.hub_path("reward"), AutoModelForSequenceClassification, "reward model",
                                       num_labels=1)
        self.max_new_tokens = eval_args.max_new_tokens
        self.sft = self.policy_metrics(self.sft_path)

    def replies(self, model, sample: bool = False) -> tuple[list[str], list[float], list[float]]:
        """Replies to the prompts, greedy or at the chat's decoding (the model's generation_config, seeded), the
        reward model's scores of them as generated (a cut reply stays cut) and the labeler's."""
        budget = model.config.max_position_embeddings - self.max_new_tokens
        if sample:
            config = copy.deepcopy(model.generation_config)
            config.max_new_tokens = self.max_new_tokens
            set_seed(0)
            settings = {"generation_config": config}
        else:
            settings = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": self.max_new_tokens,
                        "eos_token_id": self.tokenizer.eos_token_id, "pad_token_id": self.tokenizer.pad_token_id}
        prompt_ids, reply_ids = generate_reply_ids(model, self.tokenizer, self.prompts, max_prompt_tokens=budget,
                                                   **settings)
        texts, scores = scored_replies(self.reward_model, self.tokenizer, prompt_ids, reply_ids)
        gold = (self.labeler.score(self.prompts, texts, ended(self.tokenizer, reply_ids))
                if self.labeler else [0.0] * len(texts))
        return texts, scores, gold

    def policy_metrics(self, folder: Path) -> dict:
        model = load_model(folder, AutoModelForCausalLM, "policy", tokenizer=self.tokenizer)
        replies, scores, gold = self.replies(model)
        sampled, _, gold_sample = self.replies(model, sample=True)
        specificity = reply_specificity(self.prompts, replies, self.human_replies, per_reply=True)
        return {
            "scores": scores,
            "gold": gold,
            "gold_sample": gold_sample,
            "reply_words_sample": sum(len(r.split()) for r in sampled) / len(sampled),
            "specificity_scores": specificity["scores"],
            "recall_at_1": next_reply_recall(folder, self.tokenizer, self.rows)["recall_at_1"],
            "specificity": specificity["specificity"],
            "echo_rate": specificity["echo_rate"],
            "repeated_3gram": load_metric("repeated_ngrams").compute(predictions=replies, n=3)["repeated_ngram_rate"],
            "distinct_2": load_metric("distinct_n").compute(predictions=replies)["distinct_2"],
            "reply_words": sum(len(r.split()) for r in replies) / len(replies),
        }

    def evaluate(self, folder: Path) -> dict:
        row = self.policy_metrics(folder)
        win_rate = load_metric("win_rate")
        row["win_rate"] = win_rate.compute(predictions=row.pop("scores"), references=self.sft["scores"])["win_rate"]
        # The labeler's verdict: the gold judge the reward model stands for (0.5 everywhere without a labeler).
        for key, field in (("gold", "gold_win_rate"), ("gold_sample", "gold_win_rate_sample")):
            row[field] = win_rate.compute(predictions=row.pop(key), references=self.sft[key])["win_rate"]
        gains = [p - s for p, s in zip(row.pop("specificity_scores"), self.sft["specificity_scores"])]
        row["specificity_gain"] = statistics.fmean(gains)
        row["specificity_gain_se"] = statistics.stdev(gains) / math.sqrt(len(gains))
        row["final_kl"] = json.loads((folder / "minichatgpt.json").read_text())["metrics"].get("final_kl")
        return {field: row[field] for field in FIELDS}


def summary(rows: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for field in FIELDS:
        values = [row[field] for row in rows if row[field] is not None]
        mean[field] = statistics.fmean(values) if values else None
        std[field] = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def table(title: str, rows: list[tuple[str, dict]], std: dict | None = None) -> str:
    def cell(field, value):
        if value is None:
            return "n/a"
        return f"{value:.3f} ± {std[field]:.3f}" if std is not None and field in std else f"{value:.3f}"

    lines = [title, "| " + " | ".join(["", *FIELDS]) + " |", "|" + "---|" * (len(FIELDS) + 1)]
    lines += ["| " + " | ".join([label, *(cell(f, row.get(f)) for f in FIELDS)]) + " |" for label, row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml", help="the run whose SFT and reward models to use")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per algorithm, counted from --first_seed")
    parser.add_argument("--first_seed", type=int, default=1,
                        help="start the seeds here (e.g. 4 with --seeds 3 to confirm a setting chosen on seeds 1-3)")
    parser.add_argument("--algorithms", nargs="+", choices=(*RL_ALGORITHMS, "dpo"), default=["ppo", "rloo"],
                        help="RL algorithms (ppo.algorithm) and dpo, the DPO stage")
    parser.add_argument("--prompts", type=int, default=None,
                        help="held-out prompts per policy, all by default (on the quickstart's 1,909 the standard "
                             "error of a specificity gain is about 0.01; on its first 200, about 0.04)")
    parser.add_argument("--ranking_contexts", type=int, default=200, help="held-out contexts for next-reply recall@1")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--overrides", default="",
                        help="the stage's settings over the recipe's, as on its command line: \"--kl_coef 0.1\"")
    args = parser.parse_args()
    try:
        recipe = load_recipe(args.recipe)
        work = Path(recipe.output_dir("rlhf_seeds")).resolve()
        evaluator = Evaluator(recipe, args.prompts, args.ranking_contexts)
        report = {"recipe": str(recipe.path), "fields": list(FIELDS), "prompts": len(evaluator.prompts),
                  "sft": {k: v for k, v in evaluator.sft.items() if not k.endswith("scores")}}
        for algorithm in args.algorithms:
            rows = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                name, stage = run_policy_stage(recipe, work, algorithm, seed, shlex.split(args.overrides))
                rows.append({"seed": seed, **evaluator.evaluate(work / "hub" / f"{name}-{stage}")})
                print(f"{algorithm} seed {seed}: " + ", ".join(f"{k}={rows[-1][k]}" for k in FIELDS), flush=True)
            mean, std = summary(rows)
            report[algorithm] = {"seeds": rows, "mean": mean, "std": std}
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(table(f"\nSFT ({recipe.hub_path('sft')}), for reference", [("sft", report["sft"])]))
    for algorithm in args.algorithms:
        rows = report[algorithm]["seeds"]
        print(table(f"\n{algorithm}: per seed", [(f"seed {row['seed']}", row) for row in rows]))
        print(table(f"{algorithm}: mean ± std over {len(rows)} seeds", [("mean ± std", report[algorithm]["mean"])],
                    report[algorithm]["std"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
