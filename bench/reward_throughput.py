"""Training throughput of the reward stage (TRL RewardTrainer) with random batches against length-grouped batches
(the stage's default), on the quickstart's automatic preference pairs (chitchat, no download) and a run's SFT model.

    python bench/reward_throughput.py                              # after the quickstart run
    python bench/reward_throughput.py --model hub/smoke-sft --steps 20

Prints, for each sampler: pairs/s, real (unpadded) tokens/s, the share of padding in the batches, and peak RSS.
"""

import argparse
import resource
import tempfile
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from pipeline.config import DataArguments
from pipeline.preferences import preference_splits
from pipeline.reward import with_lengths


class CountingCollator(DataCollatorForPreference):
    """Counts the real and the padded tokens of every batch it makes."""

    real_tokens = padded_tokens = 0

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()
        return batch


class StepTimer(TrainerCallback):
    """Times the steps after `warmup`, and counts the real tokens the collator made for them."""

    def __init__(self, warmup, collator):
        self.warmup, self.collator, self.steps = warmup, collator, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start, self.tokens_before = time.time(), self.collator.real_tokens
        elif state.global_step > self.warmup:
            self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.time() - self.start
        self.tokens = self.collator.real_tokens - self.tokens_before


def bench(model_path, pairs, sampler, steps, warmup, batch, tmp_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=tmp_dir, max_steps=warmup + steps, per_device_train_batch_size=batch,
                        learning_rate=4e-4, train_sampling_strategy=sampler, remove_unused_columns=False,
                        max_length=model.config.max_position_embeddings, logging_steps=10**9, save_strategy="no",
                        report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0)
    collator = CountingCollator(pad_token_id=tokenizer.pad_token_id)
    timer = StepTimer(warmup, collator)
    RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer, data_collator=collator,
                  callbacks=[timer]).train()
    return (timer.steps * batch / timer.seconds, timer.tokens / timer.seconds,
            1 - collator.real_tokens / collator.padded_tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hub/quickstart-sft", help="SFT model the reward model starts from")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context_turns", type=int, default=1)
    args = parser.parse_args()
    data = DataArguments(dialog_sources=["chitchat"])
    kinds = ["other_conversation", "truncated", "shuffled", "looped", "generic"]
    pairs, _, _ = preference_splits(data, kinds, None, args.context_turns, 0, (args.steps + args.warmup) * args.batch,
                                    eval_pairs=1)
    pairs = with_lengths(pairs.remove_columns("kind"))
    print(f"{torch.get_num_threads()} CPU threads; {args.model}; batch {args.batch} pairs; {args.steps} timed steps")
    for sampler in ("random", "group_by_length"):
        with tempfile.TemporaryDirectory() as tmp_dir:
            pairs_per_s, tokens_per_s, padding = bench(args.model, pairs, sampler, args.steps, args.warmup,
                                                       args.batch, tmp_dir)
        print(f"{sampler:16} {pairs_per_s:8.1f} pairs/s {tokens_per_s:10,.0f} real tokens/s   padding {padding:.0%}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
