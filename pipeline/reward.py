"""Train a reward model on preference pairs with TRL's RewardTrainer; pushes {hub_dir}/{run_name}-reward.

    accelerate launch pipeline/reward.py --config recipes/smoke.yaml [--learning_rate 1e-4]
"""

import logging
import time
from collections import defaultdict

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
    run_stage,
    trainer_defaults,
)
from pipeline.generation import score_pairs
from pipeline.hub import card_metadata, check_writable, push
from pipeline.preferences import preference_splits

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


def main(recipe, overrides):
    data_args, stage_args, training_args = recipe.parse_stage(
        "reward", overrides,
        defaults=trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_total_limit=2,
                                  eval_strategy="no", logging_steps=10, train_sampling_strategy="group_by_length",
                                  remove_unused_columns=False),
    )
    set_seed(training_args.seed)
    check_writable(recipe.run.hub_dir)
    sft_path = recipe.hub_path("sft")
    tokenizer = load_tokenizer(sft_path, "SFT model's tokenizer")
    model = load_model(sft_path, AutoModelForSequenceClassification, "SFT model", tokenizer=tokenizer, num_labels=1,
                       attn_implementation=padded_attention(training_args.bf16))
    model.config.pad_token_id = tokenizer.pad_token_id
    training_args.max_length = fit_context(recipe, "reward", training_args.max_length,
                                           model.config.max_position_embeddings)

    train_pairs, eval_pairs, how = preference_splits(data_args, stage_args.rejected_kinds,
                                                     stage_args.rejected_weights,
                                                     recipe.reward_context_turns(stage_args),
                                                     training_args.seed, stage_args.max_pairs, stage_args.eval_pairs,
                                                     built_per_preference=stage_args.built_per_preference)
    print(f"reward data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs; {how}")

    before = pairwise_report(model, tokenizer, eval_pairs)
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

    metrics = {
        "eval_accuracy_before": before["all"]["accuracy"],
        "eval_accuracy": after["all"]["accuracy"],
        "eval_margin": after["all"]["margin"],
        **{f"eval_accuracy_{kind}": row["accuracy"] for kind, row in after.items() if kind != "all"},
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
    name = recipe.hub_name("reward")
    body = f"""# {name}

Reward model of the minichatgpt run `{recipe.run_name}`: `{sft_path}` with a scalar head
(`AutoModelForSequenceClassification`, `num_labels=1`), trained with TRL `RewardTrainer`.

Pairs: {how}.

## Held-out pairwise accuracy

| rejected kind | pairs | before training | after training | mean margin |
|---|---|---|---|---|
{table}

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
                            "metrics": metrics, "per_kind": {"before": before, "after": after},
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
