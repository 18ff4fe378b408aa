"""Supervised fine-tuning on dialogs with TRL's SFTTrainer; pushes {hub_dir}/{run_name}-sft, a chat model.

    accelerate launch pipeline/sft.py --config recipes/smoke.yaml [--use_peft true --lora_r 16]
"""

import logging
import time

from datasets import Dataset
from transformers import AutoModelForCausalLM, set_seed
from trl import SFTTrainer, get_peft_config

from pipeline.attention import padded_attention
from pipeline.chat_format import END_OF_TURN
from pipeline.common import (
    fit_context,
    last_logged,
    load_model,
    load_tokenizer,
    metrics_table,
    perplexity,
    plot_curves,
    precision_label,
    resume_checkpoint,
    revision_folder,
    run_stage,
    trainer_defaults,
)
from pipeline.config import split_settings
from pipeline.data import conversation_windows, data_card, dialog_splits
from pipeline.generation import chat_generation_config, generate_replies
from pipeline.hub import card_metadata, check_writable, push

logger = logging.getLogger("minichatgpt.sft")


def windows(dataset, max_turns: int, tokenizer, max_length: int) -> Dataset:
    """The conversations cut into windows of at most `max_turns` turns that fit in `max_length` tokens once rendered,
    so that the trainer truncates none: the chat template renders a turn as its role token, its content and the
    end-of-turn token."""
    conversations = dataset["messages"]
    contents = [turn["content"] for messages in conversations for turn in messages]
    lengths = iter(len(ids) + 2 for ids in tokenizer(contents, add_special_tokens=False)["input_ids"])
    return Dataset.from_dict({"messages": [
        window for messages in conversations
        for window in conversation_windows(messages, max_turns, [next(lengths) for _ in messages], max_length)]})


def main(recipe, overrides):
    data_args, stage_args, training_args, model_args = recipe.parse_stage(
        "sft", overrides,
        defaults=trainer_defaults(assistant_only_loss=True, eos_token=END_OF_TURN,
                                  lr_scheduler_type="cosine", warmup_steps=0.05, save_total_limit=2,
                                  eval_strategy="no", logging_steps=10,
                                  # Windows of similar length batched together: random batches are mostly padding
                                  # (quickstart: 183 s instead of 231 s, held-out reply perplexity 115.6 vs 114.5).
                                  train_sampling_strategy="group_by_length"),
    )
    set_seed(training_args.seed)
    resume = resume_checkpoint(training_args, recipe.fingerprint("sft", overrides))
    base_path = stage_args.base_model or str(recipe.hub_path("pretrain"))
    base_files = revision_folder(base_path)
    tokenizer = load_tokenizer(base_files, "base model's tokenizer")
    model = load_model(base_files, AutoModelForCausalLM, "base model", tokenizer=tokenizer,
                       attn_implementation=padded_attention(training_args.bf16))
    check_writable(recipe.run.hub_dir, model)
    # A chat model's turn ends at <|end|> (the trainer's eos_token): said here, so the trainer need not realign them.
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.config.eos_token_id = model.generation_config.eos_token_id = end_of_turn
    context = model.config.max_position_embeddings
    training_args.max_length = fit_context(recipe, "sft", training_args.max_length, context)

    data_reports = []
    train_dialogs, eval_dialogs = dialog_splits(data_args, data_reports)
    train_set = windows(train_dialogs, stage_args.max_turns, tokenizer, training_args.max_length)
    eval_set = windows(eval_dialogs, stage_args.max_turns, tokenizer, training_args.max_length)
    print(f"sft data: {len(train_set)} training and {len(eval_set)} held-out conversation windows; "
          + "; ".join(report.summary() for report in data_reports))

    sample_conversations = [[{"role": "user", "content": p}] for p in stage_args.sample_prompts]
    greedy = {"do_sample": False, "max_new_tokens": 32, "eos_token_id": end_of_turn,
              "pad_token_id": tokenizer.pad_token_id, "repetition_penalty": 1.2}
    base_samples = generate_replies(model, tokenizer, sample_conversations, max_prompt_tokens=context - 32, **greedy)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    before = trainer.evaluate()["eval_loss"]
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    after = trainer.evaluate()["eval_loss"]

    model = trainer.model
    if model_args.use_peft:
        model = model.merge_and_unload()
    model.generation_config = chat_generation_config(tokenizer)
    samples = generate_replies(model, tokenizer, sample_conversations, max_prompt_tokens=context - 32, **greedy)
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

    def write(folder):
        model.save_pretrained(folder)
        trainer.processing_class.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"loss": "train loss", "eval_loss": "eval loss"},
                    folder / "loss_curve.png", f"{recipe.hub_name('sft')} fine-tuning")

    rows = "\n".join(f"| {p} | {b} | {s} |" for p, b, s in zip(stage_args.sample_prompts, base_samples, samples))
    name = recipe.hub_name("sft")
    body = f"""# {name}

`{base_path}` fine-tuned by minichatgpt with TRL `SFTTrainer` on {', '.join(data_args.dialog_sources)}
(loss on assistant tokens only{', LoRA merged into the weights' if model_args.use_peft else ''}).
Held-out reply perplexity went from {metrics['eval_reply_perplexity_before']} to {metrics['eval_reply_perplexity']}.

{metrics_table(metrics)}

## Data

{data_card(data_reports)}

## Sample replies (greedy, repetition penalty 1.2)

| prompt | base model | after SFT |
|---|---|---|
{rows}

![loss curve](loss_curve.png)
"""
    target = push(recipe.run.hub_dir, name, write,
                  metadata={"stage": "sft", "parent": base_path.rstrip("/").split("/")[-1], "recipe": str(recipe.path),
                            "data_split": split_settings(data_args),
                            "metrics": metrics, "data": [report.as_dict() for report in data_reports],
                            "log_history": trainer.state.log_history,
                            "samples": dict(zip(stage_args.sample_prompts, samples)),
                            "fingerprint": recipe.fingerprint("sft", overrides)},
                  card_body=body,
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(base_path, data_args.dialog_sources, recipe.path, metrics,
                                              "text-generation", precision_label(training_args)))
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
