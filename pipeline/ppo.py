"""RLHF: PPO (trl.experimental.ppo.PPOTrainer, trl==1.12.0), RLOO (trl.RLOOTrainer) or GRPO (trl.GRPOTrainer) moves
the SFT policy toward a higher composite reward (reward model + repetition, end-of-turn and relevance terms,
pipeline/rewards.py) under a KL leash; pushes {hub_dir}/{run_name}-ppo, the chat model, whichever the algorithm.

    accelerate launch pipeline/ppo.py --config recipes/smoke.yaml [--algorithm grpo --seed 1 --kl_coef 0.1]
"""

import logging
import math
import time
from dataclasses import fields

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    TrainingArguments,
    set_seed,
)
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.experimental.ppo import PPOTrainer

from eval.metrics import load_metric
from pipeline.attention import padded_attention
from pipeline.chat_format import END_OF_TURN, GENERATION_PROMPT
from pipeline.common import (
    last_logged,
    load_model,
    load_tokenizer,
    metrics_table,
    plot_curves,
    precision_label,
    print_per_process,
    revision_folder,
    run_stage,
    trainer_defaults,
)
from pipeline.config import split_settings
from pipeline.data import dialog_splits, sample_pairs
from pipeline.errors import PipelineError
from pipeline.generation import (
    chat_generation_config,
    ended,
    fit_history,
    generate_reply_ids,
    render_prompts,
    scored_replies,
)
from pipeline.gold_proxy import GoldProxyMonitor, plot_gold_proxy
from pipeline.guards import AdaptiveKL, RLHFGuards
from pipeline.hub import card_metadata, check_writable, push
from pipeline.labeler import recipe_labeler
from pipeline.rewards import CompositeReward, PPORewardModel, rloo_reward_funcs

logger = logging.getLogger("minichatgpt.ppo")


def prompt_conversations(dialogs, context_turns: int, limit: int | None, seed: int) -> list[list[dict]]:
    """Conversation prefixes of at most `context_turns` turns that end at a user turn followed by a reply, a seeded
    sample spread over all the conversations (one prompt of each before a second of any)."""
    return [history for _, history, _ in sample_pairs(dialogs["messages"], context_turns, limit, seed)]


def fit_conversations(tokenizer, conversations: list[list[dict]], max_tokens: int) -> list[list[dict]]:
    """The conversations with their oldest turns dropped until they fit in `max_tokens` once rendered (RLOO takes
    conversations, not token ids); one whose last turn alone is too long is left out."""
    fitted = []
    for messages in conversations:
        _, dropped = fit_history(tokenizer, messages, max_tokens)
        keep_first = 1 if messages[0]["role"] == "system" else 0
        trimmed = messages[:keep_first] + messages[keep_first + dropped :]
        if len(tokenizer.apply_chat_template(trimmed, add_generation_prompt=True, return_dict=False)) <= max_tokens:
            fitted.append(trimmed)
    return fitted


def compare(sft, policy, reward_model, labeler, tokenizer, prompts, max_prompt_tokens, max_new_tokens
            ) -> tuple[dict, list]:
    """SFT vs the RL policy's greedy replies to held-out prompts, each scored by the reward model as it was generated
    (a reply cut off by the length limit is scored without an end of turn, as training scored it) and by the labeler.
    `win_rate` is the reward model's verdict: in-distribution, since the RL stage maximised it; `gold_win_rate` the
    labeler's, whose judgement the reward model learned; eval/run.py adds the independent judges."""
    settings = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": max_new_tokens,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    replies, scores, gold = {}, {}, {}
    for name, model in (("sft", sft), ("ppo", policy)):
        prompt_ids, reply_ids = generate_reply_ids(model, tokenizer, prompts, max_prompt_tokens=max_prompt_tokens,
                                                   **settings)
        replies[name], scores[name] = scored_replies(reward_model, tokenizer, prompt_ids, reply_ids)
        if labeler is not None:
            gold[name] = labeler.score(prompts, replies[name], ended(tokenizer, reply_ids))
    distinct, win_rate = load_metric("distinct_n"), load_metric("win_rate")
    result = {"win_rate": win_rate.compute(predictions=scores["ppo"], references=scores["sft"])["win_rate"]}
    if gold:
        result["gold_win_rate"] = win_rate.compute(predictions=gold["ppo"], references=gold["sft"])["win_rate"]
    for name in ("sft", "ppo"):
        result[f"{name}_mean_reward"] = sum(scores[name]) / len(scores[name])
        result[f"{name}_reply_words"] = sum(len(r.split()) for r in replies[name]) / len(replies[name])
        for key, value in distinct.compute(predictions=replies[name]).items():
            result[f"{name}_{key}"] = value
    samples = [(p[-1]["content"], s, q) for p, s, q in zip(prompts, replies["sft"], replies["ppo"])]
    return {k: round(v, 4) for k, v in result.items()}, samples


def warm_up_reward_scale(composite: CompositeReward, policy, tokenizer, prompts: list[list[dict]], rollouts: int,
                         config, max_prompt_tokens: int) -> tuple[float, float]:
    """Standardise the reward model's score on `rollouts` replies of the SFT policy to as many training prompts,
    sampled as the rollouts are; each process samples its share and the scores of all are gathered, so that every
    process uses the same scale."""
    state = PartialState()
    mine = prompts[:rollouts][state.process_index :: state.num_processes]
    prompt_ids, reply_ids = generate_reply_ids(
        policy.to(state.device), tokenizer, mine, batch_size=32, max_prompt_tokens=max_prompt_tokens, do_sample=True,
        temperature=config.temperature, top_k=0, top_p=1.0, max_new_tokens=config.response_length,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    composite.reward_model.to(state.device)
    scores = gather_object(composite.reward_model_scores(prompt_ids, reply_ids))
    composite.set_reward_model_scale(scores)
    mean, std = composite.reward_model_scale
    print_per_process(f"reward-model scale from {len(scores)} warm-up rollouts: mean {mean:.4f}, std {std:.4f}")
    return mean, std


# The trainers that sample a group of replies per prompt and take their baseline from the group: (config class,
# trainer class). Both read reward functions over conversations and count steps alike.
GROUP_TRAINERS = {"rloo": (RLOOConfig, RLOOTrainer), "grpo": (GRPOConfig, GRPOTrainer)}


def group_config(config, stage_args, reward_weights: list[float]) -> RLOOConfig | GRPOConfig:
    """RLOO's or GRPO's settings from the same `ppo` section: the training arguments as they are, and PPO's knobs
    under their names there. All count `total_episodes` as replies sampled; a batch of replies is used
    num_ppo_epochs times."""
    algorithm = stage_args.algorithm
    num_generations = getattr(stage_args, f"{algorithm}_num_generations")
    replies_per_batch = (config.per_device_train_batch_size * config.gradient_accumulation_steps
                         * PartialState().num_processes)
    if replies_per_batch % num_generations:
        raise PipelineError(f"ppo.{algorithm}_num_generations ({num_generations}) must divide the replies per batch, "
                            f"per_device_train_batch_size x gradient_accumulation_steps x processes "
                            f"({replies_per_batch})")
    if config.kl_coef <= 0:
        raise PipelineError(f"ppo.kl_coef must be above 0 with algorithm {algorithm}: its KL to the SFT policy is only "
                            "measured when it is penalised, and the guards watch it")
    training = {f.name: getattr(config, f.name) for f in fields(TrainingArguments) if f.init}
    training["max_steps"] = math.ceil(config.total_episodes / replies_per_batch) * config.num_ppo_epochs
    own = {"loss_type": stage_args.grpo_loss_type} if algorithm == "grpo" else {}
    return GROUP_TRAINERS[algorithm][0](
        **training, **own, beta=config.kl_coef, max_completion_length=config.response_length,
        temperature=config.temperature, top_k=0, num_generations=num_generations,
        num_iterations=config.num_ppo_epochs, epsilon=config.cliprange, reward_weights=reward_weights)


def build_ppo(config, tokenizer, policy, ref_policy, composite, reward_files, train_prompts, eval_prompts,
              max_prompt_tokens, guards):
    """PPOTrainer on rendered prompts, the composite as its reward model and the reward model as its value model;
    returns the trainer and the way to read and write its KL coefficient."""
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=PPORewardModel(composite, tokenizer.convert_tokens_to_ids(END_OF_TURN),
                                    tokenizer.convert_tokens_to_ids(GENERATION_PROMPT)),
        value_model=load_model(reward_files, AutoModelForSequenceClassification, "reward model", num_labels=1,
                               attn_implementation=padded_attention(config.bf16)),
        train_dataset=Dataset.from_dict({"input_ids": render_prompts(tokenizer, train_prompts, max_prompt_tokens)}),
        eval_dataset=Dataset.from_dict({"input_ids": render_prompts(tokenizer, eval_prompts, max_prompt_tokens)}),
        callbacks=[guards],
    )
    return trainer, (lambda: trainer.args.kl_coef, lambda value: setattr(trainer.args, "kl_coef", value))


def build_group(config, stage_args, tokenizer, policy, ref_policy, composite, train_prompts, max_prompt_tokens,
                guards):
    """RLOOTrainer or GRPOTrainer on conversations, one reward function per part of the composite; returns the
    trainer and the way to read and write its KL coefficient (both read `beta` at every loss)."""
    reward_funcs, reward_weights = rloo_reward_funcs(composite)
    trainer = GROUP_TRAINERS[stage_args.algorithm][1](
        model=policy, reward_funcs=reward_funcs, args=group_config(config, stage_args, reward_weights),
        train_dataset=Dataset.from_dict({"prompt": fit_conversations(tokenizer, train_prompts, max_prompt_tokens)}),
        processing_class=tokenizer, callbacks=[guards])
    for model in (ref_policy, composite.reward_model):
        model.to(trainer.accelerator.device)
    return trainer, (lambda: trainer.beta, lambda value: setattr(trainer, "beta", value))


def main(recipe, overrides):
    data_args, stage_args, config = recipe.parse_stage(
        "ppo", overrides,
        defaults=trainer_defaults(stop_token="eos", missing_eos_penalty=1.0, num_sample_generations=0,
                                  learning_rate=1e-5, kl_coef=0.05, temperature=1.0, response_length=32,
                                  save_strategy="no", logging_steps=1),
    )
    set_seed(config.seed)
    sft_path, reward_path = recipe.hub_path("sft"), recipe.hub_path("reward")
    config.sft_model_path, config.reward_model_path = str(sft_path), str(reward_path)
    sft_files, reward_files = revision_folder(sft_path), revision_folder(reward_path)
    tokenizer = load_tokenizer(sft_files, "SFT model's tokenizer")
    reward_tokenizer = load_tokenizer(reward_files, "reward model's tokenizer")
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise PipelineError(f"{reward_path}: the reward model was built for another tokenizer than {sft_path}; "
                            "train the reward model from this run's SFT model")
    tokenizer.padding_side = "left"
    attention = padded_attention(config.bf16)
    policy = load_model(sft_files, AutoModelForCausalLM, "SFT model", tokenizer=tokenizer,
                        attn_implementation=attention)
    check_writable(recipe.run.hub_dir, policy)
    # Rollouts must sample from the policy's plain distribution: the chat defaults (repetition penalty, top-p) would
    # make the sampled log-probs disagree with the training forward pass and bias the ratio and the KL.
    policy.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    ref_policy = load_model(sft_files, AutoModelForCausalLM, "SFT model", attn_implementation=attention)
    reward_model = load_model(reward_files, AutoModelForSequenceClassification, "reward model", tokenizer=tokenizer,
                              num_labels=1, attn_implementation=attention)
    context = policy.config.max_position_embeddings
    max_prompt_tokens = min(stage_args.max_prompt_length, context - config.response_length)
    if max_prompt_tokens <= 0:
        raise PipelineError(f"{recipe.path}: ppo.response_length ({config.response_length}) leaves no room for a "
                            f"prompt in the model's context of {context} tokens")

    train_dialogs, eval_dialogs = dialog_splits(data_args)
    train_prompts = prompt_conversations(train_dialogs, stage_args.context_turns, stage_args.max_prompts,
                                         data_args.split_seed)
    eval_prompts = prompt_conversations(eval_dialogs, stage_args.context_turns, stage_args.compare_prompts,
                                        data_args.split_seed)
    if not train_prompts or not eval_prompts:
        raise PipelineError("no prompts: the dialogs have no user turn followed by an assistant reply")
    labeler = recipe_labeler(recipe, data_args, train_dialogs["messages"])

    # PPO's end-of-turn penalty is PPOConfig's own missing_eos_penalty, applied by PPOTrainer; RLOO and GRPO get the
    # same rule from the composite with that weight.
    composite = CompositeReward(
        reward_model, ref_policy, tokenizer, end_token_id=tokenizer.eos_token_id,
        weights={"reward_model": stage_args.reward_model_weight, "repetition": stage_args.repetition_weight,
                 "end_of_turn": config.missing_eos_penalty or 0.0, "relevance": stage_args.relevance_weight,
                 "echo": stage_args.echo_weight},
        repetition_ngram=stage_args.repetition_ngram, normalize_reward_model=stage_args.normalize_reward_model,
        reward_model_clip=stage_args.reward_model_clip)
    if stage_args.normalize_reward_model and stage_args.reward_model_weight:
        warm_up_reward_scale(composite, policy, tokenizer, train_prompts, stage_args.reward_scale_rollouts, config,
                             max_prompt_tokens)
    guards = RLHFGuards(tokenizer, eval_prompts[: stage_args.guard_prompts], stage_args.max_kl, max_prompt_tokens,
                        config.response_length)
    if stage_args.algorithm == "ppo":
        trainer, kl_coef = build_ppo(config, tokenizer, policy, ref_policy, composite, reward_files, train_prompts,
                                     eval_prompts, max_prompt_tokens, guards)
    else:
        trainer, kl_coef = build_group(config, stage_args, tokenizer, policy, ref_policy, composite, train_prompts,
                                       max_prompt_tokens, guards)
    print(f"{stage_args.algorithm} data: {len(trainer.train_dataset)} training prompts, {len(eval_prompts)} held-out "
          "prompts")
    if stage_args.kl_target is not None:
        trainer.add_callback(AdaptiveKL(stage_args.kl_target, stage_args.kl_adapt_rate, *kl_coef))
    monitor = None
    if labeler is not None:
        gold_prompts = prompt_conversations(eval_dialogs, stage_args.context_turns, stage_args.gold_prompts,
                                            data_args.split_seed + 2)
        monitor = GoldProxyMonitor(labeler, reward_model, tokenizer, gold_prompts,
                                   chat_generation_config(tokenizer, config.response_length), max_prompt_tokens,
                                   stage_args.gold_every, config.seed)
        trainer.add_callback(monitor)

    start = time.time()
    trainer.train()
    wall = time.time() - start

    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy = getattr(policy, "policy", policy)
    policy.generation_config = chat_generation_config(tokenizer)
    comparison, samples = compare(ref_policy, policy, reward_model, labeler, tokenizer, eval_prompts,
                                  max_prompt_tokens, config.response_length)
    final_kl = last_logged(trainer.state.log_history, "objective/kl")
    if stage_args.algorithm == "ppo":
        episodes = trainer.state.episode
    else:
        episodes = trainer.state.global_step // trainer.args.num_iterations * trainer.args.generation_batch_size
    metrics = {
        **comparison,
        "final_kl": round(final_kl, 4) if final_kl is not None else None,
        "final_kl_coef": round(kl_coef[0](), 5),
        "episodes": episodes,
        "wall_seconds": round(wall, 1),
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    print(f"{stage_args.algorithm} summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    guards.print_warnings()
    if not trainer.is_world_process_zero():
        return

    def write(folder):
        policy.save_pretrained(folder)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"objective/scores": "composite reward", "objective/kl": "KL to SFT"},
                    folder / "rl_curve.png", f"{recipe.hub_name('ppo')}: {ALGORITHM_NAMES[stage_args.algorithm]}")
        if monitor is not None:
            plot_gold_proxy(monitor.history, folder / "gold_proxy.png",
                            f"{ALGORITHM_NAMES[stage_args.algorithm]}: gold vs proxy")

    target = push(recipe.run.hub_dir, recipe.hub_name("ppo"), write,
                  metadata={"stage": "ppo", "algorithm": stage_args.algorithm, "seed": config.seed,
                            "data_split": split_settings(data_args),
                            "temperature": config.temperature, "reward_weights": composite.weights,
                            "reward_model_scale": composite.reward_model_scale,
                            "parent": recipe.hub_name("sft"), "recipe": str(recipe.path),
                            "metrics": metrics, "log_history": trainer.state.log_history,
                            "guards": guards.record(), "gold_proxy": monitor.history if monitor else None,
                            "samples": samples, "fingerprint": recipe.fingerprint("ppo", overrides)},
                  card_body=model_card(recipe, stage_args, config, composite, guards, monitor, metrics, samples,
                                       episodes, len(eval_prompts)),
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(str(sft_path), data_args.dialog_sources, recipe.path, metrics,
                                              "text-generation", precision_label(config)))
    print(f"pushed {target}")


ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}


def model_card(recipe, stage_args, config, composite, guards, monitor, metrics, samples, episodes,
               eval_prompts) -> str:
    name = ALGORITHM_NAMES[stage_args.algorithm]
    sample_rows = "\n".join(f"| {p} | {s} | {q} |" for p, s, q in samples[:8])
    trainer_name = {
        "ppo": "PPO (TRL `trl.experimental.ppo.PPOTrainer`, trl 1.12.0)",
        "rloo": f"RLOO (TRL `trl.RLOOTrainer`, {stage_args.rloo_num_generations} replies per prompt)",
        "grpo": f"GRPO (TRL `trl.GRPOTrainer`, {stage_args.grpo_num_generations} replies per prompt, loss "
                f"`{stage_args.grpo_loss_type}`)",
    }[stage_args.algorithm]
    weights = ", ".join(f"{part} {weight}" for part, weight in composite.weights.items())
    scale = (f"standardised by mean {composite.reward_model_scale[0]:.3f} and std {composite.reward_model_scale[1]:.3f} "
             f"of {stage_args.reward_scale_rollouts} warm-up rollouts" if composite.reward_model_scale else "raw")
    gold = ("" if monitor is None else f"""
## Gold and proxy

Every {monitor.every} steps the policy replied to {len(monitor.prompts)} held-out prompts at the chat's decoding; the
labeler `{monitor.labeler.name}` (gold) and the reward model (its learned proxy) judged the replies. Over-optimisation
shows as the proxy rising while the gold falls.

{monitor.curve_lines()}

![gold vs proxy](gold_proxy.png)
""")
    return f"""# {recipe.hub_name("ppo")}

The chat model of the minichatgpt run `{recipe.run_name}`: `{recipe.hub_path("sft")}` trained with {trainer_name}
against a composite reward (weights: {weights}; reward model `{recipe.hub_path("reward")}`, {scale}), with a KL
penalty (kl_coef={config.kl_coef}, KL target {stage_args.kl_target}) to the SFT policy. {episodes} episodes
sampled at temperature {config.temperature}, response length {config.response_length}, {config.num_ppo_epochs}
epochs per batch, seed {config.seed}.

## {name} vs SFT on {eval_prompts} held-out prompts (greedy replies)

`win_rate` is the reward model's verdict, in-distribution since the stage maximised it; `gold_win_rate` is the
labeler's, whose judgement the reward model learned. The evaluation report (`eval/run.py`) adds a judge the stage
never saw.

{metrics_table(metrics)}
{gold}
## Guards

KL trend: {guards.kl_trend()}. Warnings:
{guards.card_list()}

## Sample replies

| prompt | SFT | {name} |
|---|---|---|
{sample_rows}

![{name} reward and KL](rl_curve.png)
"""


if __name__ == "__main__":
    run_stage(main, __doc__)
