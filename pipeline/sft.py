"""Supervised fine-tuning on dialogs with TRL's SFTTrainer; pushes {hub_dir}/{run_name}-sft, a chat model.

    accelerate launch pipeline/sft.py --config recipes/smoke.yaml [--use_peft true --lora_r 16]
"""

import time

from transformers import AutoModelForCausalLM, set_seed
from trl import SFTTrainer, get_peft_config

from minichatgpt.cards import model_files, publish, sample_rows
from minichatgpt.console import run_stage
from minichatgpt.data.chat_format import END_OF_TURN
from minichatgpt.data.splits import data_card, dialog_splits
from minichatgpt.data.tokenized import windows
from minichatgpt.generation import chat_generation_config, sample_replies
from minichatgpt.hub import check_writable
from minichatgpt.model.loading import load_for_training
from minichatgpt.training.checkpoints import resume_checkpoint
from minichatgpt.training.defaults import fit_context, sft_defaults
from minichatgpt.training.logs import last_logged, perplexity


def main(recipe, overrides):
    data_args, stage_args, training_args, model_args = recipe.parse_stage("sft", overrides, defaults=sft_defaults())
    set_seed(training_args.seed)
    resume = resume_checkpoint(training_args, recipe.fingerprint("sft", overrides))
    base = stage_args.base_model or str(recipe.hub_path("pretrain"))
    _, tokenizer, model = load_for_training(base, AutoModelForCausalLM, "base model", training_args.bf16)
    check_writable(recipe.run.hub_dir, model)
    # A chat model's turn ends at <|end|> (the trainer's eos_token): said here, so the trainer need not realign them.
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.config.eos_token_id = model.generation_config.eos_token_id = end_of_turn
    training_args.max_length = fit_context(recipe, "sft", training_args.max_length,
                                           model.config.max_position_embeddings)

    data_reports = []
    train_dialogs, eval_dialogs = dialog_splits(data_args, data_reports)
    train_set = windows(train_dialogs, stage_args.max_turns, tokenizer, training_args.max_length)
    eval_set = windows(eval_dialogs, stage_args.max_turns, tokenizer, training_args.max_length)
    print(f"sft data: {len(train_set)} training and {len(eval_set)} held-out conversation windows; "
          + "; ".join(report.summary() for report in data_reports))
    base_samples = sample_replies(model, tokenizer, stage_args.sample_prompts, end_of_turn)

    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=get_peft_config(model_args))
    before = trainer.evaluate()["eval_loss"]
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    after = trainer.evaluate()["eval_loss"]

    model = trainer.model.merge_and_unload() if model_args.use_peft else trainer.model
    model.generation_config = chat_generation_config(tokenizer)
    samples = sample_replies(model, tokenizer, stage_args.sample_prompts, end_of_turn)
    train_loss = last_logged(trainer.state.log_history, "loss")
    metrics = {
        "train_loss": round(train_loss, 4) if train_loss is not None else None,
        "eval_loss_before": round(before, 4),
        "eval_loss": round(after, 4),
        "eval_reply_perplexity_before": round(perplexity(before), 2),
        "eval_reply_perplexity": round(perplexity(after), 2),
        "train_windows": len(train_set),
        "wall_seconds": round(wall, 1),
        "lora": bool(model_args.use_peft),
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    print("sft summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    if not trainer.is_world_process_zero():
        return
    save = model_files(model, trainer.processing_class, trainer.state.log_history,
                       {"loss": "train loss", "eval_loss": "eval loss"}, "loss_curve.png",
                       f"{recipe.hub_name('sft')} fine-tuning")
    facts = {"base": base, "sources": ", ".join(data_args.dialog_sources),
             "lora": ", LoRA merged into the weights" if model_args.use_peft else "",
             "perplexity_before": metrics["eval_reply_perplexity_before"],
             "perplexity_after": metrics["eval_reply_perplexity"], "data_card": data_card(data_reports),
             "samples": sample_rows(stage_args.sample_prompts, base_samples, samples)}
    publish(recipe, "sft", overrides, save, metrics=metrics, facts=facts, data_args=data_args,
            sources=data_args.dialog_sources, base=base, training_args=training_args,
            record={"data": [report.as_dict() for report in data_reports], "log_history": trainer.state.log_history,
                    "samples": dict(zip(stage_args.sample_prompts, samples))})


if __name__ == "__main__":
    run_stage(main, __doc__)
