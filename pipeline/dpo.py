"""Direct preference optimisation with TRL's DPOTrainer: the SFT model trained on the reward stage's preference pairs,
with the SFT model as reference and no reward model; pushes {hub_dir}/{run_name}-dpo.

    accelerate launch pipeline/dpo.py --config recipes/smoke.yaml [--beta 0.2 --learning_rate 1e-4]
"""

import math
import time

from transformers import AutoModelForCausalLM, set_seed
from trl import DPOTrainer

from minichatgpt.cards import model_files, publish, sample_rows
from minichatgpt.console import run_stage
from minichatgpt.data.preferences import reward_pairs
from minichatgpt.data.splits import dialog_splits, sample_pairs
from minichatgpt.generation import chat_generation_config, sample_replies
from minichatgpt.hub import check_writable
from minichatgpt.model.attention import padded_attention
from minichatgpt.model.loading import load_for_training, load_model
from minichatgpt.training.defaults import dpo_defaults, fit_context, trainer_defaults
from minichatgpt.training.guards import RLHFGuards
from minichatgpt.training.implicit_reward import accuracy_rows, preference_report
from minichatgpt.training.logs import last_logged

GUARD_REPLY_TOKENS = 24


def main(recipe, overrides):
    data_args, stage_args, config = recipe.parse_stage("dpo", overrides, defaults=dpo_defaults())
    # The pairs are the reward stage's, made from its settings: DPO and the reward model learn the same preferences.
    reward_args, reward_config = recipe.parse("reward", defaults=trainer_defaults())
    sample_prompts = recipe.parse("sft", defaults=trainer_defaults())[0].sample_prompts
    set_seed(config.seed)
    sft_path = recipe.hub_path("sft")
    sft_files, tokenizer, policy = load_for_training(sft_path, AutoModelForCausalLM, "SFT model", config.bf16)
    reference = load_model(sft_files, AutoModelForCausalLM, "SFT model",
                           attn_implementation=padded_attention(config.bf16))
    check_writable(recipe.run.hub_dir, policy)
    context = policy.config.max_position_embeddings
    config.max_length = fit_context(recipe, "dpo", config.max_length, context)

    dialogs = dialog_splits(data_args)
    train_pairs, eval_pairs, how = reward_pairs(recipe, data_args, reward_args, reward_config.seed, dialogs,
                                                stage_args.max_pairs)
    # DPO's loss has no margin of its own to ask for.
    train_pairs, eval_pairs = (pairs.remove_columns([c for c in ("margin", "id") if c in pairs.column_names])
                               for pairs in (train_pairs, eval_pairs))
    print(f"dpo data: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs; {how}")
    guard_prompts = [history for _, history, _ in sample_pairs(dialogs[1]["messages"],
                                                                recipe.reward_context_turns(reward_args),
                                                                stage_args.guard_prompts, data_args.split_seed)]
    # DPO samples nothing and has no KL estimate to cap: the guards watch its greedy replies for loops and collapse.
    guards = RLHFGuards(tokenizer, guard_prompts, max_kl=math.inf, max_prompt_tokens=context - GUARD_REPLY_TOKENS,
                        max_new_tokens=GUARD_REPLY_TOKENS, stage="DPO")
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, processing_class=tokenizer,
                         train_dataset=train_pairs.remove_columns("kind"), callbacks=[guards])
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
    samples = [sample_replies(model, tokenizer, sample_prompts, tokenizer.eos_token_id)
               for model in (reference, policy)]
    policy.generation_config = chat_generation_config(tokenizer)
    save = model_files(policy, tokenizer, trainer.state.log_history,
                       {"loss": "train loss", "rewards/accuracies": "train accuracy", "rewards/margins": "train margin",
                        "rewards/chosen": "implicit reward, chosen", "rewards/rejected": "implicit reward, rejected"},
                       "training_curve.png", f"{recipe.hub_name('dpo')} training")
    facts = {"sft": sft_path, "loss_type": ", ".join(config.loss_type), "beta": config.beta,
             "steps": trainer.state.global_step, "seed": config.seed, "pairs": how,
             "accuracy_rows": accuracy_rows(report), "guard_prompts": len(guard_prompts),
             "warnings": guards.card_list(), "samples": sample_rows(sample_prompts, *samples)}
    publish(recipe, "dpo", overrides, save, metrics=metrics, facts=facts, data_args=data_args,
            sources=data_args.preference_sources or data_args.dialog_sources, base=sft_path, training_args=config,
            record={"seed": config.seed, "beta": config.beta, "loss_type": config.loss_type, "per_kind": report,
                    "log_history": trainer.state.log_history, "pairs": how, "guards": guards.record(),
                    "samples": dict(zip(sample_prompts, samples[1]))})


if __name__ == "__main__":
    run_stage(main, __doc__)
