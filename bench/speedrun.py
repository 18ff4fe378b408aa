"""How much the pretrain stage learns per CPU-minute: this machine's matmul peak in fp32 and bf16 on the model's
shapes, the stage's tokens/s in each and MFU against the bf16 peak, then the held-out loss reached within a
wall-clock budget with the settings the quickstart pretrained with before bf16 and Muon (`--old`) and with the
recipe's own.

    python tokenizer/train.py --config recipes/quickstart.yaml      # once: the bench reads the recipe's tokenizer
    python bench/speedrun.py --config recipes/quickstart.yaml [--minutes 5 10]

Both budget runs train the recipe's model on the recipe's pretraining text (its held-out split for the loss) with the
stage's own code (pipeline/pretrain.py, minichatgpt/model/optimizers.py); the learning-rate schedule of each is sized to the
last budget from that setting's measured step time, and the held-out loss is read when each budget is reached
(training time only, evaluation not counted). The stage's tokens/s in each precision are timed over 20 steps in
`--rounds` alternated fp32 and bf16 runs, as one such ratio moves by ±5% on a shared 2-core machine: the speedup is
the rounds' mean ratio, MFU is the median bf16 rate's. The last lines are `speedup bf16/fp32 X`, `mfu_bf16 Y`,
`loss_at_{N}min old A new B`.
"""

import argparse
import json
import math
import shlex
import statistics
import tempfile
import time

import torch
import transformers
from transformers import Trainer, TrainerCallback, default_data_collator, set_seed

from minichatgpt.console import use_cpu_cores
from minichatgpt.data.splits import text_splits
from minichatgpt.data.tokenized import pack_blocks
from minichatgpt.model.gpt2 import build_model
from minichatgpt.model.loading import load_tokenizer
from minichatgpt.model.optimizers import build_optimizer
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import pretrain_defaults
from minichatgpt.training.throughput import flops_per_token

# The quickstart's pretraining before bf16 autocast on CPUs and Muon: fp32, AdamW, cosine from a 30-step warm-up.
OLD_SETTINGS = ("--bf16 false --optimizer adamw --lr_scheduler_type cosine --lr_scheduler_kwargs {} "
                "--learning_rate 2e-3 --weight_decay 0.1 --warmup_steps 30")
THROUGHPUT_STEPS, WARMUP_STEPS = 20, 4


def matmul_rate(shapes: list[tuple[int, int, int]], dtype: torch.dtype, min_seconds: float = 0.3) -> float:
    """FLOP/s of the three matmuls of each linear layer's training step (forward, input and weight gradients) on
    (tokens, in, out) `shapes`: total FLOPs over total time, so the big shapes weigh as they do in training."""
    flops = seconds = 0.0
    for m, k, n in shapes:
        x, w, g = (torch.randn(a, b, dtype=dtype) for a, b in ((m, k), (k, n), (m, n)))
        products = (lambda x=x, w=w: x @ w, lambda g=g, w=w: g @ w.T, lambda x=x, g=g: x.T @ g)
        for product in products:
            product()
        repeats, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            for product in products:
                product()
            repeats += 1
        seconds += time.perf_counter() - start
        flops += repeats * 3 * 2 * m * k * n
    return flops / seconds


def model_shapes(shape, vocab_size: int, tokens: int) -> list[tuple[int, int, int]]:
    d = shape.n_embd
    return [(tokens, d, 3 * d), (tokens, d, d), (tokens, d, 4 * d), (tokens, 4 * d, d), (tokens, d, vocab_size)]


class Budget(TrainerCallback):
    """Times training steps (not evaluation), evaluates when each budget in `marks` (seconds) is reached and stops
    at the last one."""

    def __init__(self, marks: list[float], skip_steps: int = 0):
        self.marks, self.skip_steps, self.losses, self.steps_at = list(marks), skip_steps, {}, {}
        self.start = self.eval_started = None
        self.eval_seconds = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def on_train_begin(self, args, state, control, **kwargs):
        if self.skip_steps == 0:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.skip_steps:
            self.start = time.perf_counter()
        if self.start is None or state.global_step <= self.skip_steps:
            return
        self.steps_timed = state.global_step - self.skip_steps
        pending = [mark for mark in self.marks if mark not in self.losses]
        # A schedule that ends before the last budget (the steps ran faster than calibrated) gives its final loss
        # to every budget still pending.
        finished = state.global_step >= state.max_steps
        reached = pending if finished else [mark for mark in pending if self.elapsed() >= mark]
        if reached:
            self.reached, self.eval_started = reached, time.perf_counter()
            self.steps_at.update(dict.fromkeys(reached, state.global_step))
            control.should_evaluate = True
            control.should_training_stop = reached == pending

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.eval_started is not None:
            self.losses.update(dict.fromkeys(self.reached, metrics["eval_loss"]))
            self.eval_seconds += time.perf_counter() - self.eval_started
            self.eval_started = None


def train(recipe, overrides: list[str], blocks, eval_blocks, tokenizer, output_dir: str, marks: list[float],
          max_steps: int, skip_steps: int) -> Budget:
    (shape,) = recipe.parse("model")
    _, stage_args, args = recipe.parse_stage("pretrain", overrides, defaults=pretrain_defaults())
    args.output_dir, args.max_steps, args.save_strategy, args.eval_strategy = output_dir, max_steps, "no", "no"
    args.report_to, args.disable_tqdm, args.logging_steps = [], True, 10**9
    set_seed(args.seed)
    model = build_model(tokenizer, shape, stage_args, args.bf16)
    budget = Budget(marks, skip_steps)
    Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=eval_blocks,
            data_collator=default_data_collator, callbacks=[budget],
            optimizers=(build_optimizer(stage_args.optimizer, model, args), None)).train()
    budget.tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * shape.n_positions
    budget.n_params = model.num_parameters()
    return budget


def sized_decay(recipe, overrides: list[str], max_steps: int, recipe_max_steps: int) -> list[str]:
    """A warmup-stable-decay schedule's decay steps as the same share of `max_steps` as of the recipe's
    `recipe_max_steps`."""
    _, _, args = recipe.parse_stage("pretrain", overrides, defaults=pretrain_defaults())
    decay_steps = (args.lr_scheduler_kwargs or {}).get("num_decay_steps")
    if args.lr_scheduler_type != "warmup_stable_decay" or not decay_steps:
        return []
    share = decay_steps / recipe_max_steps
    kwargs = {**args.lr_scheduler_kwargs, "num_decay_steps": max(1, round(share * max_steps))}
    return ["--lr_scheduler_kwargs", json.dumps(kwargs)]


def tokens_per_second(run: Budget) -> float:
    return run.steps_timed * run.tokens_per_step / run.elapsed()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe whose model, data and pretrain settings are 'new'")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0], help="wall-clock budgets")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fp32 and bf16 throughput runs, alternated: the speedup is their ratios' mean")
    parser.add_argument("--old", default=OLD_SETTINGS, help="pretrain overrides that make the 'old' settings")
    parser.add_argument("--settings", nargs="+", choices=("old", "new"), default=["old", "new"],
                        help="which settings train for the budgets: `new` alone compares recipes (shapes, say) "
                        "at the same budget, run after run")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds: expected 1 or more, got {args.rounds}")
    use_cpu_cores()
    recipe = load_recipe(args.config)
    (shape,) = recipe.parse("model")
    data_args, stage_args, training_args = recipe.parse_stage("pretrain", [], defaults=pretrain_defaults())
    tokenizer = load_tokenizer(recipe.hub_path("tokenizer"))
    train_text, eval_text = text_splits(data_args)
    blocks = pack_blocks(train_text, tokenizer, shape.n_positions, None)
    eval_blocks = pack_blocks(eval_text, tokenizer, shape.n_positions, None)
    if stage_args.max_eval_blocks:
        eval_blocks = eval_blocks.select(range(min(len(eval_blocks), stage_args.max_eval_blocks)))
    tokens = training_args.per_device_train_batch_size * shape.n_positions
    vocab_size = math.ceil(len(tokenizer) / stage_args.pad_vocab_to_multiple_of) * stage_args.pad_vocab_to_multiple_of
    print(f"device: CPU ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}); torch "
          f"{torch.__version__}, transformers {transformers.__version__}; {args.config}: model {shape.n_layer}x"
          f"{shape.n_embd}, context {shape.n_positions}, vocab {vocab_size}; {len(blocks)} training blocks, "
          f"{len(eval_blocks)} held-out", flush=True)

    shapes = model_shapes(shape, vocab_size, tokens)
    peak = {name: matmul_rate(shapes, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"matmul peak on the model's shapes: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} "
          f"GFLOP/s ({peak['bf16'] / peak['fp32']:.2f}x)", flush=True)

    old = shlex.split(args.old)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            rounds.append({})
            for name in ("fp32", "bf16"):
                run = train(recipe, old + ["--bf16", str(name == "bf16").lower()], blocks, eval_blocks, tokenizer,
                            tmp, [float("inf")], WARMUP_STEPS + THROUGHPUT_STEPS, WARMUP_STEPS)
                rounds[-1][name] = tokens_per_second(run)
        rate = {name: statistics.median(r[name] for r in rounds) for name in ("fp32", "bf16")}
        speedups = [r["bf16"] / r["fp32"] for r in rounds]
        spread = f" ± {statistics.stdev(speedups) / math.sqrt(len(speedups)):.2f}" if len(speedups) > 1 else ""
        print(f"speedup bf16/fp32 per round: {' '.join(f'{x:.2f}' for x in speedups)} (mean "
              f"{statistics.fmean(speedups):.2f}{spread}); tokens/s below are each precision's median", flush=True)
        per_token = flops_per_token(run.n_params, shape.n_layer, shape.n_embd, shape.n_positions)
        for name in ("fp32", "bf16"):
            print(f"pipeline {name}: {rate[name]:,.0f} tokens/s, {rate[name] * per_token / 1e9:.0f} GFLOP/s, "
                  f"{rate[name] * per_token / peak[name]:.1%} of the {name} matmul peak", flush=True)

        marks = [minutes * 60 for minutes in sorted(args.minutes)]
        losses = {}
        for name, overrides in (("old", old), ("new", [])):
            if name not in args.settings:
                continue
            calibration = train(recipe, overrides, blocks, eval_blocks, tokenizer, tmp, [float("inf")],
                                WARMUP_STEPS + THROUGHPUT_STEPS, WARMUP_STEPS)
            steps_per_second = calibration.steps_timed / calibration.elapsed()
            max_steps = max(1, int(marks[-1] * steps_per_second))
            schedule = ["--max_steps", str(max_steps), *sized_decay(recipe, overrides, max_steps, training_args.max_steps)]
            run = train(recipe, overrides + schedule, blocks, eval_blocks, tokenizer, tmp, marks, max_steps, 0)
            losses[name] = run.losses
            print(f"{name} ({' '.join(overrides) or 'the recipe'}): {tokens_per_second(run):,.0f} tokens/s, "
                  f"schedule of {max_steps} steps; held-out loss "
                  + ", ".join(f"{run.losses[m]:.3f} after {m / 60:g} min (step {run.steps_at[m]})" for m in marks),
                  flush=True)
    print(f"speedup bf16/fp32 {statistics.fmean(speedups):.2f}")
    print(f"mfu_bf16 {rate['bf16'] * per_token / peak['bf16']:.3f}")
    for mark in marks:
        print(f"loss_at_{mark / 60:g}min " + " ".join(f"{name} {losses[name][mark]:.3f}" for name in losses))


if __name__ == "__main__":
    main()
