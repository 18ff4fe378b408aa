"""Pretrain a GPT-2 from scratch on the run's text and push it to {hub_dir}/{run_name}-base.

    accelerate launch pipeline/pretrain.py --config recipes/smoke.yaml [--learning_rate 3e-4]
"""

import time

from transformers import GenerationConfig, Trainer, default_data_collator, set_seed

from minichatgpt.cards import model_files, publish
from minichatgpt.console import print_per_process, run_stage
from minichatgpt.data.tokenized import pretraining_blocks
from minichatgpt.hub import check_writable
from minichatgpt.model.gpt2 import build_model
from minichatgpt.model.loading import load_tokenizer
from minichatgpt.model.optimizers import build_optimizer
from minichatgpt.training.checkpoints import resume_checkpoint
from minichatgpt.training.defaults import pretrain_defaults
from minichatgpt.training.logs import last_logged, perplexity
from minichatgpt.training.throughput import ThroughputCallback, flops_per_token


def main(recipe, overrides):
    (shape,) = recipe.parse("model")
    data_args, stage_args, training_args = recipe.parse_stage("pretrain", overrides, defaults=pretrain_defaults())
    set_seed(training_args.seed)
    resume = resume_checkpoint(training_args, recipe.fingerprint("pretrain", overrides))
    tokenizer = load_tokenizer(recipe.hub_path("tokenizer"))
    train_blocks, eval_blocks = pretraining_blocks(recipe, data_args, tokenizer, shape.n_positions,
                                                   stage_args.max_eval_blocks, training_args)
    if eval_blocks is None:
        training_args.eval_strategy = "no"

    model = build_model(tokenizer, shape, stage_args, training_args.bf16)
    check_writable(recipe.run.hub_dir, model)
    n_params = model.num_parameters()
    print(f"model: GPT-2 {shape.n_layer}x{shape.n_embd}, {shape.n_head} heads, context {shape.n_positions}, "
          f"vocab {model.config.vocab_size}: {n_params / 1e6:.2f}M parameters; {len(train_blocks)} training blocks")
    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size * shape.n_positions)
    throughput = ThroughputCallback(tokens_per_step, flops_per_token(n_params, shape.n_layer, shape.n_embd,
                                                                     shape.n_positions))
    trainer = Trainer(model=model, args=training_args, train_dataset=train_blocks, eval_dataset=eval_blocks,
                      data_collator=default_data_collator, processing_class=tokenizer, callbacks=[throughput],
                      optimizers=(build_optimizer(stage_args.optimizer, model, training_args), None))
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
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        max_new_tokens=64, do_sample=True, top_k=50, temperature=0.8)
    save = model_files(trainer.model, tokenizer, trainer.state.log_history,
                       {"loss": "train loss", "eval_loss": "eval loss"}, "loss_curve.png",
                       f"{recipe.hub_name('pretrain')} pretraining")
    facts = {**vars(shape), "millions": n_params / 1e6, "sources": ", ".join(data_args.text_sources),
             "tokenizer": recipe.hub_name("tokenizer")}
    publish(recipe, "pretrain", overrides, save, metrics=metrics, facts=facts, data_args=data_args,
            sources=data_args.text_sources, parent=recipe.hub_name("tokenizer"), training_args=training_args,
            record={"log_history": trainer.state.log_history})


if __name__ == "__main__":
    run_stage(main, __doc__)
