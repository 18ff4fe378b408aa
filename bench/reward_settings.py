"""Reward-model settings compared from one SFT model: each variant trains with the reward stage's own code from the
run's SFT model and is scored on the evaluation's held-out pairs, overall and per rejected kind, every variant paired
against the first on the same pairs, so that a difference can be told from noise.

    python pipeline/run.py --config recipes/chat-hour.yaml --skip_eval     # once: the run's SFT model
    python bench/reward_settings.py --config recipes/chat-hour.yaml --variants "" "--rejected_weights 8 1 1 1 1"

Each variant is `pipeline/reward.py --config <copy> <its overrides>` on a copy of the recipe named {run}-reward{i}
whose hub is {output_root}/{run}/reward_settings/hub, with the run's SFT model linked in: the run's own models are
never written. The held-out pairs are the evaluation's (the recipe's own reward settings build them, whatever a variant
overrides), so every variant is judged on the same pairs. Per variant: the stage's training seconds, accuracy on all
held-out pairs and on each rejected kind with standard errors, and for each variant after the first its paired
difference from the first.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoModelForSequenceClassification

from minichatgpt.data.splits import load_dialogs, split_eval
from minichatgpt.errors import PipelineError
from minichatgpt.evaluation.policies import held_out_pairs
from minichatgpt.evaluation.stats import standard_error
from minichatgpt.generation import score_pairs
from minichatgpt.hub import read_metadata
from minichatgpt.model.loading import load_model, load_tokenizer
from minichatgpt.recipe import load_recipe

from stage_variants import paired, train_variants


class HeldOutPairs:
    """The evaluation's held-out preference pairs, the same for every variant."""

    def __init__(self, recipe):
        data_args, _ = recipe.parse_stage("eval", [])
        self.pairs, self.how = held_out_pairs(recipe, data_args, split_eval(load_dialogs(data_args), data_args))

    def score(self, folder: Path) -> dict:
        """1 for each pair whose chosen reply the model scores above the rejected one, else 0."""
        tokenizer = load_tokenizer(folder, "reward model's tokenizer")
        model = load_model(folder, AutoModelForSequenceClassification, "reward model", num_labels=1)
        chosen, rejected = score_pairs(model, tokenizer, self.pairs)
        agreement = read_metadata(folder).get("agreement", {}).get("after")
        return {"correct": [float(c > r) for c, r in zip(chosen, rejected)],
                **({"spearman": agreement["spearman"]} if agreement else {})}


def accuracy_cell(correct: list[float]) -> str:
    return f"{sum(correct) / len(correct):.3f} ± {standard_error(correct):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/chat-hour.yaml", help="the run whose SFT model to start from")
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="reward overrides per variant, each one quoted string (\"\" is the recipe's own)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    try:
        recipe = load_recipe(args.config)
        held_out = HeldOutPairs(recipe)
        rows = train_variants(recipe, "reward", args.variants, held_out.score, linked_stages=("sft",),
                              copied_outputs=("comparisons",))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    kinds = held_out.pairs["kind"]
    groups = {"all": list(range(len(kinds))),
              **{kind: [i for i, k in enumerate(kinds) if k == kind] for kind in sorted(set(kinds)) if len(set(kinds)) > 1}}
    if "margin" in held_out.pairs.column_names:
        by_margin = sorted(range(len(kinds)), key=held_out.pairs["margin"].__getitem__)
        groups |= {"smaller margin": sorted(by_margin[: len(by_margin) // 2]),
                   "larger margin": sorted(by_margin[len(by_margin) // 2 :])}
    first = rows[0]
    spearman = "spearman" in first
    print(f"\n{len(held_out.pairs)} held-out pairs ({held_out.how}); accuracy ± SE, then the paired difference from "
          f"the first variant\n\n| variant | train s | " + " | ".join(f"{g} ({len(i)})" for g, i in groups.items())
          + (" | Spearman within a prompt" if spearman else "") + " |\n|---|---|" + "---|" * (len(groups) + spearman))
    for row in rows:
        row["accuracy"], row["difference"] = {}, {}
        cells = []
        for group, indices in groups.items():
            correct = [row["correct"][i] for i in indices]
            difference, se = paired(correct, [first["correct"][i] for i in indices])
            row["accuracy"][group] = {"accuracy": sum(correct) / len(correct), "se": standard_error(correct)}
            row["difference"][group] = {"difference": difference, "se": se}
            cells.append(accuracy_cell(correct) + ("" if row is first else f" ({difference:+.3f} ± {se:.3f})"))
        if spearman:
            cells.append(f"{row['spearman']['mean']:.3f} ± {row['spearman']['se']:.3f}")
        print(f"| {row['variant']} | {row['train_seconds']:.0f} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": str(recipe.path), "pairs": len(held_out.pairs),
                                               "how": held_out.how, "variants": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
