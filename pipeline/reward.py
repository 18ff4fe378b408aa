"""Train a reward model on preference pairs with TRL's RewardTrainer; pushes {hub_dir}/{run_name}-reward.

    accelerate launch pipeline/reward.py --config recipes/smoke.yaml [--learning_rate 1e-4]
"""

import time
from pathlib import Path

from transformers import AutoModelForSequenceClassification, set_seed
from trl import RewardTrainer

from minichatgpt.cards import model_files, publish
from minichatgpt.console import run_stage
from minichatgpt.data.preferences import BUILT, reward_pairs
from minichatgpt.data.splits import dialog_splits
from minichatgpt.feedback.comparisons import agreement_report, collect_comparisons, read_comparisons
from minichatgpt.hub import check_writable
from minichatgpt.model.loading import load_for_training
from minichatgpt.training.defaults import fit_context, reward_defaults
from minichatgpt.training.reward_model import accuracy_rows, agreement_table, pairwise_report, with_lengths


def main(recipe, overrides):
    data_args, stage_args, training_args = recipe.parse_stage("reward", overrides, defaults=reward_defaults())
    set_seed(training_args.seed)
    sft_path = recipe.hub_path("sft")
    _, tokenizer, model = load_for_training(sft_path, AutoModelForSequenceClassification, "SFT model",
                                            training_args.bf16, num_labels=1)
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
    trainer = RewardTrainer(model=model, args=training_args, processing_class=tokenizer,
                            train_dataset=with_lengths(train_pairs.remove_columns("kind")))
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
    save = model_files(trainer.model, tokenizer, trainer.state.log_history,
                       {"loss": "train loss", "accuracy": "train accuracy"}, "training_curve.png",
                       f"{recipe.hub_name('reward')} training")
    facts = {"sft": sft_path, "pairs": how, "accuracy_rows": accuracy_rows(before, after),
             "agreement": agreement_table(agreement_before, agreement) if agreement else "",
             "path": recipe.hub_path("reward")}
    publish(recipe, "reward", overrides, save, metrics=metrics, facts=facts, data_args=data_args,
            sources=data_args.preference_sources or data_args.dialog_sources, base=sft_path,
            training_args=training_args,
            record={"per_kind": {"before": before, "after": after},
                    "agreement": {"before": agreement_before, "after": agreement},
                    "log_history": trainer.state.log_history, "pairs": how})


if __name__ == "__main__":
    run_stage(main, __doc__)
