"""Train a reward model on preference pairs with TRL's RewardTrainer; pushes {hub_dir}/{run_name}-reward.

    accelerate launch pipeline/reward.py --config recipes/smoke.yaml [--learning_rate 1e-4]
"""

import logging
import time
from collections import defaultdict
from pathlib import Path

from transformers import AutoModelForSequenceClassification, set_seed
from trl import RewardTrainer

from pipeline.attention import padded_attention
from pipeline.common import (
    fit_context,
    load_model,
    load_tokenizer,
    metrics_table,
    plot_curves,
    precision_label,
    revision_folder,
    run_stage,
    trainer_defaults,
)
from pipeline.comparisons import agreement_report, collect_comparisons, read_comparisons
from pipeline.config import split_settings
from pipeline.data import dialog_splits
from pipeline.generation import score_pairs
from pipeline.hub import card_metadata, check_writable, push
from pipeline.preferences import BUILT, reward_pairs

logger = logging.getLogger("minichatgpt.reward")


def pairwise_report(model, tokenizer, pairs) -> dict:
    """Accuracy (chosen scored above rejected) and mean margin, overall and per rejected kind."""
    chosen, rejected = score_pairs(model, tokenizer, pairs)
    by_kind = defaultdict(list)
    for kind, c, r in zip(pairs["kind"], chosen, rejected):
        by_kind["all"].append(c - r)
        by_kind[kind].append(c - r)
    return {
        kind: {"accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
               "margin": round(sum(margins) / len(margins), 4), "pairs": len(margins)}
        for kind, margins in sorted(by_kind.items())
    }


def with_lengths(pairs):
    """Adds the `length` column (characters of the longer conversation) by which the group_by_length sampler batches
    pairs of similar length: random batches of quickstart pairs are two thirds padding."""
    return pairs.map(lambda pair: {"length": max(len(str(pair["prompt"] + pair["chosen"])),
                                                 len(str(pair["prompt"] + pair["rejected"])))})


def agreement_table(before: dict, after: dict) -> str:
    """The card's section on how the reward model agrees with the labeler on held-out comparisons."""
    def cell(row):
        return f"{row['accuracy']:.3f} ± {row['accuracy_se']:.3f}" if row["accuracy"] is not None else "-"

    lines = [f"| pairwise accuracy, {name.replace('_', ' ')} | {after[name]['pairs']} | {cell(before[name])} | "
             f"{cell(after[name])} |" for name in ("all", "smaller_margin", "larger_margin")]
    spearman = {k: row["spearman"] for k, row in (("before", before), ("after", after))}
    lines.append(f"| rank correlation with the labeler within a prompt (Spearman) | {spearman['after']['prompts']} "
                 f"prompts | {spearman['before']['mean']:.3f} ± {spearman['before']['se']:.3f} | "
                 f"{spearman['after']['mean']:.3f} ± {spearman['after']['se']:.3f} |")
    return ("\n## Agreement with the labeler on held-out comparisons of the SFT model's replies\n\n"
            "| measure | items | before training | after training |\n|---|---|---|---|\n" + "\n".join(lines) + "\n")


def main(recipe, overrides):
    data_args, stage_args, training_args = recipe.parse_stage(
        "reward", overrides,
        defaults=trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_total_limit=2,
                                  eval_strategy="no", logging_steps=10, train_sampling_strategy="group_by_length",
                                  remove_unused_columns=False),
    )
    set_seed(training_args.seed)
    sft_path = recipe.hub_path("sft")
    sft_files = revision_folder(sft_path)
    tokenizer = load_tokenizer(sft_files, "SFT model's tokenizer")
    model = load_model(sft_files, AutoModelForSequenceClassification, "SFT model", tokenizer=tokenizer, num_labels=1,
                       attn_implementation=padded_attention(training_args.bf16))
    check_writable(recipe.run.hub_dir, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    training_args.max_length = fit_context(recipe, "reward", training_args.max_length,
                                           model.config.max_position_embeddings)

    dialogs = dialog_splits(data_args)
    labelled = not data_args.preference_sources and stage_args.labeler != BUILT
    if labelled:
        print(collect_comparisons(recipe, data_args, stage_args, training_args.seed, dialogs), flush=True)
    train_pairs, eval_pairs, how = reward_pairs(recipe, data_args, stage_args, training_args.seed, dialogs)
    print(f"reward data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs; {how}")
    if "margin" in train_pairs.column_names:
        train_pairs = (train_pairs.map(lambda pair: {"margin": pair["margin"] * stage_args.margin_scale})
                       if stage_args.margin_scale else train_pairs.remove_columns("margin"))

    held_out_rows = read_comparisons(Path(recipe.output_dir("comparisons")) / "held_out.jsonl") if labelled else None
    before = pairwise_report(model, tokenizer, eval_pairs)
    agreement_before = agreement_report(model, tokenizer, held_out_rows, stage_args.tie_margin) if labelled else None
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=with_lengths(train_pairs.remove_columns("kind")),
        processing_class=tokenizer,
    )
    start = time.time()
    trainer.train()
    wall = time.time() - start
    after = pairwise_report(trainer.model, tokenizer, eval_pairs)
    agreement = agreement_report(trainer.model, tokenizer, held_out_rows, stage_args.tie_margin) if labelled else None

    metrics = {
        "eval_accuracy_before": before["all"]["accuracy"],
        "eval_accuracy": after["all"]["accuracy"],
        "eval_margin": after["all"]["margin"],
        **{f"eval_accuracy_{kind}": row["accuracy"] for kind, row in after.items() if kind != "all"},
        **({"eval_accuracy_larger_margin": round(agreement["larger_margin"]["accuracy"], 4),
            "eval_accuracy_smaller_margin": round(agreement["smaller_margin"]["accuracy"], 4),
            "eval_spearman": round(agreement["spearman"]["mean"], 4),
            "eval_spearman_before": round(agreement_before["spearman"]["mean"], 4)} if agreement else {}),
        "train_pairs": len(train_pairs),
        "wall_seconds": round(wall, 1),
    }
    print("reward summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    if not trainer.is_world_process_zero():
        return

    def write(folder):
        trainer.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"loss": "train loss", "accuracy": "train accuracy"},
                    folder / "training_curve.png", f"{recipe.hub_name('reward')} training")

    table = "\n".join(
        f"| {kind} | {after[kind]['pairs']} | {before[kind]['accuracy']:.3f} | {after[kind]['accuracy']:.3f} | "
        f"{after[kind]['margin']:.3f} |" for kind in after
    )
    agreement_section = agreement_table(agreement_before, agreement) if agreement else ""
    name = recipe.hub_name("reward")
    body = f"""# {name}

Reward model of the minichatgpt run `{recipe.run_name}`: `{sft_path}` with a scalar head
(`AutoModelForSequenceClassification`, `num_labels=1`), trained with TRL `RewardTrainer`.

Pairs: {how}.

## Held-out pairwise accuracy

| rejected kind | pairs | before training | after training | mean margin |
|---|---|---|---|---|
{table}
{agreement_section}
{metrics_table(metrics)}

## Use

```python
from transformers import AutoTokenizer, pipeline
tokenizer = AutoTokenizer.from_pretrained("{recipe.hub_path('reward')}")
score = pipeline("text-classification", model="{recipe.hub_path('reward')}", function_to_apply="none")
text = tokenizer.apply_chat_template(
    [{{"role": "user", "content": "how are you ?"}}, {{"role": "assistant", "content": "good , you ?"}}], tokenize=False)
print(score(text)[0]["score"])
```

![training curve](training_curve.png)
"""
    target = push(recipe.run.hub_dir, name, write,
                  metadata={"stage": "reward", "parent": recipe.hub_name("sft"), "recipe": str(recipe.path),
                            "data_split": split_settings(data_args),
                            "metrics": metrics, "per_kind": {"before": before, "after": after},
                            "agreement": {"before": agreement_before, "after": agreement},
                            "log_history": trainer.state.log_history, "pairs": how,
                            "fingerprint": recipe.fingerprint("reward", overrides)},
                  card_body=body,
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(str(sft_path), data_args.preference_sources or data_args.dialog_sources,
                                              recipe.path, metrics, "text-classification",
                                              precision_label(training_args)))
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
