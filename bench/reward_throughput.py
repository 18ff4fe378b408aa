"""Training throughput of the reward stage (TRL RewardTrainer) with random batches against length-grouped batches
(the stage's default), on a recipe's automatic preference pairs and the SFT model of its run.

    python bench/reward_throughput.py                                            # after the quickstart run
    python bench/reward_throughput.py --recipe recipes/smoke.yaml --steps 20     # after the smoke run

Prints, for each sampler: pairs/s, real (unpadded) tokens/s, the share of padding in the batches, and peak RSS.
"""

import argparse
import resource
import tempfile

import torch
from pretrain_throughput import StepTimer
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from minichatgpt.data.preferences import preference_splits
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults
from minichatgpt.training.reward_model import with_lengths


class CountingCollator(DataCollatorForPreference):
    """Counts the real and the padded tokens of every batch it makes."""

    real_tokens = padded_tokens = 0

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()
        return batch


class TokenCountingTimer(StepTimer):
    """The pretrain benchmark's step timer, also counting the real tokens the collator made for the timed steps."""

    def __init__(self, warmup, collator):
        super().__init__(warmup)
        self.collator = collator

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.tokens_before = self.collator.real_tokens
        super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        self.tokens = self.collator.real_tokens - self.tokens_before


def bench(model_path, pairs, sampler, steps, warmup, batch, learning_rate, tmp_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=tmp_dir, max_steps=warmup + steps, per_device_train_batch_size=batch,
                        learning_rate=learning_rate, train_sampling_strategy=sampler, remove_unused_columns=False,
                        max_length=model.config.max_position_embeddings, logging_steps=10**9, save_strategy="no",
                        report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0,
                        activation_checkpointing=False)  # as the reward stage (minichatgpt/training/defaults.py)
    collator = CountingCollator(pad_token_id=tokenizer.pad_token_id)
    timer = TokenCountingTimer(warmup, collator)
    RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer, data_collator=collator,
                  callbacks=[timer]).train()
    return (timer.steps * batch / timer.seconds, timer.tokens / timer.seconds,
            1 - collator.real_tokens / collator.padded_tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml", help="pairs, batch and lr of its reward stage")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    data_args, reward_args, training_args = recipe.parse_stage("reward", [], defaults=trainer_defaults())
    batch, model = training_args.per_device_train_batch_size, recipe.hub_path("sft")
    pairs, _, _ = preference_splits(data_args, reward_args.rejected_kinds, reward_args.rejected_weights,
                                    recipe.reward_context_turns(reward_args), training_args.seed, (args.steps + args.warmup) * batch,
                                    eval_pairs=1)
    pairs = with_lengths(pairs.remove_columns("kind"))
    print(f"{torch.get_num_threads()} CPU threads; {model}; batch {batch} pairs; {args.steps} timed steps")
    for sampler in ("random", "group_by_length"):
        with tempfile.TemporaryDirectory() as tmp_dir:
            pairs_per_s, tokens_per_s, padding = bench(model, pairs, sampler, args.steps, args.warmup, batch,
                                                       training_args.learning_rate, tmp_dir)
        print(f"{sampler:16} {pairs_per_s:8.1f} pairs/s {tokens_per_s:10,.0f} real tokens/s   padding {padding:.0%}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
