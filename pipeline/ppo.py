"""RLHF: PPO (trl.experimental.ppo.PPOTrainer, trl==1.12.0), RLOO (trl.RLOOTrainer) or GRPO (trl.GRPOTrainer) moves
the SFT policy toward a higher composite reward (reward model + repetition, end-of-turn and relevance terms,
minichatgpt/training/rl_reward.py) under a KL leash; pushes {hub_dir}/{run_name}-ppo, the chat model, whichever the
algorithm.

    accelerate launch pipeline/ppo.py --config recipes/smoke.yaml [--algorithm grpo --seed 1 --kl_coef 0.1]
"""

import time

from transformers import set_seed

from minichatgpt.cards import ALGORITHM_NAMES, model_files, publish, rl_facts
from minichatgpt.console import run_stage
from minichatgpt.data.splits import dialog_splits
from minichatgpt.errors import PipelineError
from minichatgpt.evaluation.policies import card_metrics, compare_policies
from minichatgpt.feedback.labeler import recipe_labeler
from minichatgpt.generation import chat_generation_config
from minichatgpt.hub import check_writable
from minichatgpt.training.defaults import ppo_defaults
from minichatgpt.training.gold_proxy import plot_gold_proxy
from minichatgpt.training.guards import RLHFGuards
from minichatgpt.training.logs import last_logged
from minichatgpt.training.rl import (
    build_trainer,
    episodes,
    gold_proxy_monitor,
    kl_coefficient,
    load_rl_models,
    prompt_budget,
    prompt_conversations,
    recipe_reward,
    trained_policy,
    warm_up_reward_scale,
)


def main(recipe, overrides):
    data_args, stage_args, config = recipe.parse_stage("ppo", overrides, defaults=ppo_defaults())
    set_seed(config.seed)
    tokenizer, policy, ref_policy, reward_model, reward_files = load_rl_models(recipe, config)
    check_writable(recipe.run.hub_dir, policy)
    max_prompt_tokens = prompt_budget(recipe, stage_args, config, policy)
    train_dialogs, eval_dialogs = dialog_splits(data_args)
    train_prompts, eval_prompts = (
        prompt_conversations(dialogs, stage_args.context_turns, limit, data_args.split_seed)
        for dialogs, limit in ((train_dialogs, stage_args.max_prompts), (eval_dialogs, stage_args.compare_prompts)))
    if not train_prompts or not eval_prompts:
        raise PipelineError("no prompts: the dialogs have no user turn followed by an assistant reply")
    labeler = recipe_labeler(recipe, data_args, train_dialogs["messages"])
    composite = recipe_reward(stage_args, config, reward_model, ref_policy, tokenizer)
    if stage_args.normalize_reward_model and stage_args.reward_model_weight:
        warm_up_reward_scale(composite, policy, tokenizer, train_prompts, stage_args.reward_scale_rollouts, config,
                             max_prompt_tokens)
    guards = RLHFGuards(tokenizer, eval_prompts[: stage_args.guard_prompts], stage_args.max_kl, max_prompt_tokens,
                        config.response_length)
    trainer = build_trainer(stage_args, config, tokenizer, policy, ref_policy, composite, reward_files, train_prompts,
                            eval_prompts, max_prompt_tokens, guards)
    print(f"{stage_args.algorithm} data: {len(trainer.train_dataset)} training prompts, {len(eval_prompts)} held-out "
          "prompts")
    monitor = gold_proxy_monitor(labeler, reward_model, tokenizer, eval_dialogs, data_args, stage_args, config,
                                 max_prompt_tokens)
    if monitor is not None:
        trainer.add_callback(monitor)
    start = time.time()
    trainer.train()
    wall = time.time() - start

    policy = trained_policy(trainer)
    policy.generation_config = chat_generation_config(tokenizer)
    # Greedy replies of SFT and the policy to the held-out prompts, judged by the labeler and the reward model.
    rows, replies = compare_policies({"sft": ref_policy, "ppo": policy}, reward_model, labeler, tokenizer,
                                     eval_prompts, max_prompt_tokens, config.response_length, seed=config.seed)
    final_kl = last_logged(trainer.state.log_history, "objective/kl")
    metrics = {**{k: round(v, 4) for k, v in card_metrics(rows["ppo"]["greedy"], "ppo").items()},
               "final_kl": round(final_kl, 4) if final_kl is not None else None,
               "final_kl_coef": round(getattr(*kl_coefficient(trainer)), 5), "episodes": episodes(trainer),
               "wall_seconds": round(wall, 1)}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    print(f"{stage_args.algorithm} summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    guards.print_warnings()
    if not trainer.is_world_process_zero():
        return
    tokenizer.padding_side = "right"
    algorithm = ALGORITHM_NAMES[stage_args.algorithm]
    save = model_files(policy, tokenizer, trainer.state.log_history,
                       {"objective/scores": "composite reward", "objective/kl": "KL to SFT"}, "rl_curve.png",
                       f"{recipe.hub_name('ppo')}: {algorithm}",
                       *([lambda folder: plot_gold_proxy(monitor.history, folder / "gold_proxy.png",
                                                         f"{algorithm}: gold vs proxy")] if monitor else []))
    samples = [(p[-1]["content"], s, q) for p, s, q in zip(eval_prompts, replies["sft", "greedy"],
                                                           replies["ppo", "greedy"])]
    facts = rl_facts(recipe, stage_args, config, composite, guards, monitor, metrics["episodes"], len(eval_prompts),
                     samples)
    publish(recipe, "ppo", overrides, save, metrics=metrics, facts=facts, data_args=data_args,
            sources=data_args.dialog_sources, base=recipe.hub_path("sft"), training_args=config,
            record={"algorithm": stage_args.algorithm, "seed": config.seed, "temperature": config.temperature,
                    "reward_weights": composite.weights, "reward_model_scale": composite.reward_model_scale,
                    "log_history": trainer.state.log_history, "guards": guards.record(),
                    "gold_proxy": monitor.history if monitor else None, "samples": samples})


if __name__ == "__main__":
    run_stage(main, __doc__)
