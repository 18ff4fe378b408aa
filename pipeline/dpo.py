"""Direct preference optimisation with TRL's DPOTrainer: the SFT model trained on the reward stage's preference pairs,
with the SFT model as reference and no reward model; pushes {hub_dir}/{run_name}-dpo.

    accelerate launch pipeline/dpo.py --config recipes/smoke.yaml [--beta 0.2 --learning_rate 1e-4]
"""

import logging
import math
import time
from collections import defaultdict

from transformers import AutoModelForCausalLM, set_seed
from trl import DPOTrainer

from pipeline.attention import padded_attention
from pipeline.common import (
    fit_context,
    last_logged,
    load_model,
    load_tokenizer,
    metrics_table,
    plot_curves,
    precision_label,
    revision_folder,
    run_stage,
    trainer_defaults,
)
from pipeline.config import split_settings
from pipeline.data import dialog_splits, sample_pairs
from pipeline.generation import chat_generation_config, generate_replies, reply_log_likelihoods
from pipeline.guards import RLHFGuards
from pipeline.hub import card_metadata, check_writable, push
from pipeline.preferences import reward_pairs

logger = logging.getLogger("minichatgpt.dpo")
GUARD_REPLY_TOKENS = 24


def reply_log_probs(model, tokenizer, prompts, replies) -> list[float]:
    """log p(reply | prompt) of each pair, both as message lists, rendered as the chat template writes them."""
    prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=False) for p in prompts]
    reply_ids = [tokenizer.apply_chat_template(p + r, return_dict=False)[len(ids):]
                 for p, r, ids in zip(prompts, replies, prompt_ids)]
    return reply_log_likelihoods(model, prompt_ids, reply_ids)


def preference_report(policy, reference, tokenizer, pairs, beta: float) -> dict:
    """On held-out pairs, overall and per rejected kind: how often DPO's implicit reward,
    beta * log(p_policy / p_reference) of a reply, puts chosen above rejected, its mean margin, and how often the
    reference model (SFT) alone finds chosen the likelier reply."""
    logps = {(name, side): reply_log_probs(model, tokenizer, pairs["prompt"], pairs[side])
             for name, model in (("policy", policy), ("reference", reference)) for side in ("chosen", "rejected")}
    by_kind = defaultdict(list)
    for i, kind in enumerate(pairs["kind"]):
        implicit = {side: beta * (logps["policy", side][i] - logps["reference", side][i])
                    for side in ("chosen", "rejected")}
        row = (implicit["chosen"] - implicit["rejected"], logps["reference", "chosen"][i] - logps["reference", "rejected"][i])
        by_kind["all"].append(row)
        by_kind[kind].append(row)
    return {
        kind: {"accuracy": round(sum(m > 0 for m, _ in rows) / len(rows), 4),
               "margin": round(sum(m for m, _ in rows) / len(rows), 4),
               "sft_accuracy": round(sum(s > 0 for _, s in rows) / len(rows), 4), "pairs": len(rows)}
        for kind, rows in sorted(by_kind.items())
    }


def main(recipe, overrides):
    data_args, stage_args, config = recipe.parse_stage(
        "dpo", overrides,
        defaults=trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_strategy="no",
                                  eval_strategy="no", logging_steps=10, learning_rate=1e-5),
    )
    # The pairs are the reward stage's, made from its settings: DPO and the reward model learn the same preferences.
    reward_args, reward_config = recipe.parse("reward", defaults=trainer_defaults())
    sft_args = recipe.parse("sft", defaults=trainer_defaults())[0]
    set_seed(config.seed)
    sft_path = recipe.hub_path("sft")
    sft_files = revision_folder(sft_path)
    tokenizer = load_tokenizer(sft_files, "SFT model's tokenizer")
    attention = padded_attention(config.bf16)
    policy = load_model(sft_files, AutoModelForCausalLM, "SFT model", tokenizer=tokenizer,
                        attn_implementation=attention)
    reference = load_model(sft_files, AutoModelForCausalLM, "SFT model", attn_implementation=attention)
    check_writable(recipe.run.hub_dir, policy)
    context = policy.config.max_position_embeddings
    config.max_length = fit_context(recipe, "dpo", config.max_length, context)

    context_turns = recipe.reward_context_turns(reward_args)
    dialogs = dialog_splits(data_args)
    train_pairs, eval_pairs, how = reward_pairs(recipe, data_args, reward_args, reward_config.seed, dialogs,
                                                stage_args.max_pairs)
    # DPO's loss has no margin of its own to ask for.
    train_pairs, eval_pairs = (pairs.remove_columns([c for c in ("margin", "id") if c in pairs.column_names])
                               for pairs in (train_pairs, eval_pairs))
    print(f"dpo data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs; {how}")

    guard_prompts = [history for _, history, _ in sample_pairs(dialogs[1]["messages"], context_turns,
                                                                stage_args.guard_prompts, data_args.split_seed)]
    # DPO samples nothing and has no KL estimate to cap: the guards watch its greedy replies for loops and collapse.
    guards = RLHFGuards(tokenizer, guard_prompts, max_kl=math.inf, max_prompt_tokens=context - GUARD_REPLY_TOKENS,
                        max_new_tokens=GUARD_REPLY_TOKENS, stage="DPO")
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config,
                         train_dataset=train_pairs.remove_columns("kind"), processing_class=tokenizer,
                         callbacks=[guards])
    start = time.time()
    trainer.train()
    wall = time.time() - start
    policy = trainer.accelerator.unwrap_model(trainer.model)
    report = preference_report(policy, reference.to(policy.device), tokenizer, eval_pairs, config.beta)

    train_loss = last_logged(trainer.state.log_history, "loss")
    metrics = {
        "eval_preference_accuracy": report["all"]["accuracy"],
        "eval_margin": report["all"]["margin"],
        "eval_sft_likelihood_accuracy": report["all"]["sft_accuracy"],
        **{f"eval_preference_accuracy_{kind}": row["accuracy"] for kind, row in report.items() if kind != "all"},
        "train_loss": round(train_loss, 4) if train_loss is not None else None,
        "train_pairs": len(train_pairs),
        "wall_seconds": round(wall, 1),
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    print("dpo summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    guards.print_warnings()
    if not trainer.is_world_process_zero():
        return

    prompts = [[{"role": "user", "content": p}] for p in sft_args.sample_prompts]
    greedy = {"do_sample": False, "max_new_tokens": 32, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, "repetition_penalty": 1.2, "max_prompt_tokens": context - 32}
    tokenizer.padding_side = "left"
    samples = [generate_replies(model, tokenizer, prompts, **greedy) for model in (reference, policy)]
    tokenizer.padding_side = "right"
    policy.generation_config = chat_generation_config(tokenizer)

    def write(folder):
        policy.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"loss": "train loss", "rewards/accuracies": "train accuracy",
                                                "rewards/margins": "train margin",
                                                "rewards/chosen": "implicit reward, chosen",
                                                "rewards/rejected": "implicit reward, rejected"},
                    folder / "training_curve.png", f"{recipe.hub_name('dpo')} training")

    table = "\n".join(f"| {kind} | {row['pairs']} | {row['sft_accuracy']:.3f} | {row['accuracy']:.3f} | "
                      f"{row['margin']:.3f} |" for kind, row in report.items())
    sample_rows = "\n".join(f"| {p} | {s} | {d} |" for p, s, d in zip(sft_args.sample_prompts, *samples))
    name = recipe.hub_name("dpo")
    body = f"""# {name}

Chat model of the minichatgpt run `{recipe.run_name}`: `{sft_path}` trained with TRL `DPOTrainer` (loss
{', '.join(config.loss_type)}, beta {config.beta}) on preference pairs, with the SFT model as reference; no reward model, no
sampling. {trainer.state.global_step} steps, seed {config.seed}.

Pairs: {how}.

## Held-out pairs

Accuracy: how often DPO's implicit reward, beta · log(p_DPO / p_SFT) of a reply, ranks the chosen reply above the
rejected one; margin: its mean difference. SFT likelihood: how often the SFT model alone finds the chosen reply
likelier, what the pairs ask of a model before DPO.

| rejected kind | pairs | SFT likelihood accuracy | DPO accuracy | mean margin |
|---|---|---|---|---|
{table}

{metrics_table(metrics)}

Guards, on the greedy replies to {len(guard_prompts)} held-out prompts at every log (loops, collapse, the implicit
reward margin rising while the replies lose diversity):
{guards.card_list()}

## Sample replies (greedy, repetition penalty 1.2)

| prompt | SFT | DPO |
|---|---|---|
{sample_rows}

![training curve](training_curve.png)
"""
    target = push(recipe.run.hub_dir, name, write,
                  metadata={"stage": "dpo", "parent": recipe.hub_name("sft"), "recipe": str(recipe.path),
                            "data_split": split_settings(data_args),
                            "seed": config.seed, "beta": config.beta, "loss_type": config.loss_type,
                            "metrics": metrics, "per_kind": report, "log_history": trainer.state.log_history,
                            "pairs": how, "guards": guards.record(),
                            "samples": dict(zip(sft_args.sample_prompts, samples[1])),
                            "fingerprint": recipe.fingerprint("dpo", overrides)},
                  card_body=body,
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(str(sft_path), data_args.preference_sources or data_args.dialog_sources,
                                              recipe.path, metrics, "text-generation", precision_label(config)))
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
