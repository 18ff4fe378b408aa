"""Pretrain a GPT-2 from scratch on the run's text and push it to {hub_dir}/{run_name}-base.

    accelerate launch pipeline/pretrain.py --config recipes/smoke.yaml [--learning_rate 3e-4]
"""

import logging
import math
import time
from functools import wraps
from itertools import chain

import torch
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

from pipeline.arguments import PretrainArguments
from pipeline.attention import default_causal_attention, register_causal_attention
from pipeline.common import (
    last_logged,
    load_tokenizer,
    metrics_table,
    perplexity,
    plot_curves,
    precision_label,
    print_per_process,
    resume_checkpoint,
    run_stage,
    trainer_defaults,
)
from pipeline.config import split_settings
from pipeline.cross_entropy import chunked_causal_lm_loss
from pipeline.data import text_splits
from pipeline.errors import PipelineError
from pipeline.hub import card_metadata, check_writable, push
from pipeline.optimizers import build_optimizer

logger = logging.getLogger("minichatgpt.pretrain")

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs per token: 6·N for the weights plus 12·L·d·T for attention (PaLM appendix B)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


def device_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


class ThroughputCallback(TrainerCallback):
    """Adds tokens/s (all processes) and, on a known GPU, MFU to every log line; eval time is not counted."""

    def __init__(self, tokens_per_step: int, flops_per_token: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = device_peak_flops()

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark_time, self.mark_step, self.eval_seconds = time.time(), state.global_step, 0.0
        self.train_seconds, self.trained_steps = 0.0, 0

    def on_prediction_step(self, args, state, control, **kwargs):
        self.eval_started = getattr(self, "eval_started", None) or time.time()

    def on_evaluate(self, args, state, control, **kwargs):
        if getattr(self, "eval_started", None):
            self.eval_seconds += time.time() - self.eval_started
            self.eval_started = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        seconds = time.time() - self.mark_time - self.eval_seconds
        steps = state.global_step - self.mark_step
        if steps <= 0 or seconds <= 0:
            return
        self.train_seconds += seconds
        self.trained_steps += steps
        tokens_per_second = steps * self.tokens_per_step / seconds
        logs["tokens_per_second"] = round(tokens_per_second, 1)
        if self.peak:
            logs["mfu"] = round(tokens_per_second * self.flops_per_token / (self.peak * args.world_size), 4)
        self.mark_time, self.mark_step, self.eval_seconds = time.time(), state.global_step, 0.0

    def summary(self) -> dict:
        if not self.train_seconds:
            return {}
        rate = self.trained_steps * self.tokens_per_step / self.train_seconds
        out = {"tokens_per_second": round(rate, 1)}
        if self.peak:
            out["mfu"] = round(rate * self.flops_per_token / self.peak, 4)
        return out


def pack_blocks(dataset, tokenizer, block_size: int, num_proc: int | None):
    """Tokenize, end every document with <|endoftext|>, and pack into blocks of `block_size` tokens."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"])["input_ids"]]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        usable = len(ids) // block_size * block_size
        blocks = [ids[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [b[:] for b in blocks]}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                            desc="tokenizing")
    return tokenized.map(group, batched=True, batch_size=1000, num_proc=num_proc, desc="packing")


def build_model(tokenizer, shape, stage_args: PretrainArguments, bf16: bool) -> GPT2LMHeadModel:
    """A fresh GPT-2 set up for training on packed blocks, in bf16 autocast or not (see PretrainArguments for the
    switches)."""
    pad_to = stage_args.pad_vocab_to_multiple_of
    vocab_size = math.ceil(len(tokenizer) / pad_to) * pad_to
    register_causal_attention()
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        resid_pdrop=shape.dropout,
        embd_pdrop=shape.dropout,
        attn_pdrop=shape.dropout,
        # GPT-2's tanh GELU, computed by one fused kernel instead of the Python formula of "gelu_new".
        activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=stage_args.attention or default_causal_attention(bf16),
    )
    model = GPT2LMHeadModel(config)
    # The class name maps to no loss type, so every forward would log a warning: a graph break under torch.compile.
    model.loss_type = "ForCausalLM"
    if stage_args.loss_only_in_training:
        return_only_the_loss_in_training(model)
    chunked_loss = stage_args.chunked_loss
    if chunked_loss is None:
        # Off on accelerators by default (not measured there): at GPT-2's vocabulary its loop launches thousands of
        # kernels a step.
        chunked_loss = not torch.accelerator.is_available()
    if chunked_loss:
        model.loss_function = chunked_causal_lm_loss
    return model


def return_only_the_loss_in_training(model: GPT2LMHeadModel):
    """Training forwards (with labels) return the loss alone and build no key/value cache.

    With mixed precision, accelerate copies every floating output of the model to fp32: for GPT-2 124M at 16 x 1024
    that is 3.3 GB of logits written every step that Trainer never reads. Evaluation and generation are unchanged."""
    full_forward = model.forward

    @wraps(full_forward)
    def forward(*args, **kwargs):
        if not model.training:
            return full_forward(*args, **kwargs)
        output = full_forward(*args, **{**kwargs, "use_cache": False})
        return output if output.loss is None else CausalLMOutputWithCrossAttentions(loss=output.loss)

    model.forward = forward


def trainer_speed_defaults(cuda: bool) -> dict:
    """TrainingArguments defaults that keep the GPU from waiting for the host every step: no NaN/Inf check of the
    step's loss (a device-to-host sync; a NaN now shows in the logged loss instead of being averaged away), and on
    CUDA, batches made by two persistent workers in pinned memory and copied without blocking. On a CPU, extra
    workers would only take cores from training."""
    defaults = {"logging_nan_inf_filter": False, "dataloader_pin_memory": cuda}
    if cuda:
        defaults.update(dataloader_num_workers=2, dataloader_persistent_workers=True,
                        accelerator_config={"non_blocking": True})
    return defaults


def stage_defaults() -> dict:
    """The stage's TrainingArguments defaults, before the recipe's section and the command line."""
    return trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_total_limit=2, eval_strategy="steps",
                            logging_steps=10, **trainer_speed_defaults(torch.cuda.is_available()))


def main(recipe, overrides):
    (shape,) = recipe.parse("model")
    data_args, stage_args, training_args = recipe.parse_stage("pretrain", overrides, defaults=stage_defaults())
    set_seed(training_args.seed)
    resume = resume_checkpoint(training_args, recipe.fingerprint("pretrain", overrides))
    tokenizer = load_tokenizer(recipe.hub_path("tokenizer"))

    train_text, eval_text = text_splits(data_args)
    num_proc = 2 if len(train_text) > 20_000 else None
    with training_args.main_process_first(desc="packing"):
        train_blocks = pack_blocks(train_text, tokenizer, shape.n_positions, num_proc)
        eval_blocks = pack_blocks(eval_text, tokenizer, shape.n_positions, None)
    if len(train_blocks) == 0:
        raise PipelineError(f"{recipe.path}: the training text is shorter than one block of model.n_positions="
                            f"{shape.n_positions} tokens; add text or lower n_positions")
    if stage_args.max_eval_blocks:
        eval_blocks = eval_blocks.select(range(min(len(eval_blocks), stage_args.max_eval_blocks)))
    if len(eval_blocks) == 0:
        training_args.eval_strategy = "no"
        eval_blocks = None

    model = build_model(tokenizer, shape, stage_args, training_args.bf16)
    check_writable(recipe.run.hub_dir, model)
    n_params = model.num_parameters()
    print(f"model: GPT-2 {shape.n_layer}x{shape.n_embd}, {shape.n_head} heads, context {shape.n_positions}, "
          f"vocab {model.config.vocab_size}: {n_params / 1e6:.2f}M parameters; {len(train_blocks)} training blocks")

    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size * shape.n_positions)
    throughput = ThroughputCallback(tokens_per_step, flops_per_token(n_params, shape.n_layer, shape.n_embd,
                                                                     shape.n_positions))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[throughput],
        optimizers=(build_optimizer(stage_args.optimizer, model, training_args), None),
    )
    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    eval_loss = trainer.evaluate()["eval_loss"] if eval_blocks is not None else None

    metrics = {
        "train_loss": round(last_logged(trainer.state.log_history, "loss", result.training_loss), 4),
        "eval_loss": round(eval_loss, 4) if eval_loss is not None else None,
        "eval_perplexity": round(perplexity(eval_loss), 2) if eval_loss is not None else None,
        "tokens_seen": trainer.state.global_step * tokens_per_step,
        "parameters": n_params,
        "wall_seconds": round(wall, 1),
        **throughput.summary(),
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    print_per_process("pretrain summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    if not trainer.is_world_process_zero():
        return

    def write(folder):
        trainer.model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
            max_new_tokens=64, do_sample=True, top_k=50, temperature=0.8,
        )
        trainer.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"loss": "train loss", "eval_loss": "eval loss"},
                    folder / "loss_curve.png", f"{recipe.hub_name('pretrain')} pretraining")

    name = recipe.hub_name("pretrain")
    body = f"""# {name}

GPT-2 ({shape.n_layer} layers, width {shape.n_embd}, {shape.n_head} heads, context {shape.n_positions},
{n_params / 1e6:.2f}M parameters) pretrained from scratch by minichatgpt on {', '.join(data_args.text_sources)}
with the tokenizer `{recipe.hub_name('tokenizer')}`.

{metrics_table(metrics)}

![loss curve](loss_curve.png)
"""
    target = push(recipe.run.hub_dir, name, write,
                  metadata={"stage": "pretrain", "parent": recipe.hub_name("tokenizer"), "recipe": str(recipe.path),
                            "data_split": split_settings(data_args),
                            "metrics": metrics, "log_history": trainer.state.log_history,
                            "fingerprint": recipe.fingerprint("pretrain", overrides)},
                  card_body=body,
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(None, data_args.text_sources, recipe.path, metrics, "text-generation",
                                              precision_label(training_args)))
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
