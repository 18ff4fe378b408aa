"""The RL stage set up from one ppo section: its models, prompts and composite reward, the reward model's scale, and
the trainer (PPO on rendered prompts, RLOO or GRPO on conversations) with its KL controller and gold/proxy monitor."""

import math
from dataclasses import fields

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig, TrainingArguments
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.experimental.ppo import PPOTrainer

from minichatgpt.console import print_per_process
from minichatgpt.data.chat_format import END_OF_TURN, GENERATION_PROMPT
from minichatgpt.data.splits import sample_pairs
from minichatgpt.errors import PipelineError
from minichatgpt.generation import chat_generation_config, fit_history, generate_reply_ids, render_prompts
from minichatgpt.model.attention import padded_attention
from minichatgpt.model.loading import load_for_training, load_model, load_tokenizer, revision_folder
from minichatgpt.training.gold_proxy import GoldProxyMonitor
from minichatgpt.training.guards import AdaptiveKL
from minichatgpt.training.rl_reward import CompositeReward, PPORewardModel, rloo_reward_funcs


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
    its KL coefficient is `args.kl_coef`."""
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
    return trainer


def build_group(config, stage_args, tokenizer, policy, ref_policy, composite, train_prompts, max_prompt_tokens,
                guards):
    """RLOOTrainer or GRPOTrainer on conversations, one reward function per part of the composite; returns the
    trainer; its KL coefficient is `trainer.beta`."""
    reward_funcs, reward_weights = rloo_reward_funcs(composite)
    trainer = GROUP_TRAINERS[stage_args.algorithm][1](
        model=policy, reward_funcs=reward_funcs, args=group_config(config, stage_args, reward_weights),
        train_dataset=Dataset.from_dict({"prompt": fit_conversations(tokenizer, train_prompts, max_prompt_tokens)}),
        processing_class=tokenizer, callbacks=[guards])
    for model in (ref_policy, composite.reward_model):
        model.to(trainer.accelerator.device)
    return trainer


def load_rl_models(recipe, config):
    """The RL stage's models from one revision each of the run's SFT and reward models: the tokenizer (left padding,
    for generation), the policy (sampling rollouts from its plain distribution), the frozen reference policy and the
    reward model; and the reward model's folder, from which PPO's value model starts."""
    sft_path, reward_path = recipe.hub_path("sft"), recipe.hub_path("reward")
    config.sft_model_path, config.reward_model_path = str(sft_path), str(reward_path)
    sft_files, tokenizer, policy = load_for_training(sft_path, AutoModelForCausalLM, "SFT model", config.bf16)
    reward_files = revision_folder(reward_path)
    if load_tokenizer(reward_files, "reward model's tokenizer").get_vocab() != tokenizer.get_vocab():
        raise PipelineError(f"{reward_path}: the reward model was built for another tokenizer than {sft_path}; "
                            "train the reward model from this run's SFT model")
    tokenizer.padding_side = "left"
    attention = padded_attention(config.bf16)
    # Rollouts must sample from the policy's plain distribution: the chat defaults (repetition penalty, top-p) would
    # make the sampled log-probs disagree with the training forward pass and bias the ratio and the KL.
    policy.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    ref_policy = load_model(sft_files, AutoModelForCausalLM, "SFT model", attn_implementation=attention)
    reward_model = load_model(reward_files, AutoModelForSequenceClassification, "reward model", tokenizer=tokenizer,
                              num_labels=1, attn_implementation=attention)
    return tokenizer, policy, ref_policy, reward_model, reward_files


def prompt_budget(recipe, stage_args, config, policy) -> int:
    """The most tokens of a prompt that leave room for a reply of `response_length` in the model's context."""
    context = policy.config.max_position_embeddings
    budget = min(stage_args.max_prompt_length, context - config.response_length)
    if budget <= 0:
        raise PipelineError(f"{recipe.path}: ppo.response_length ({config.response_length}) leaves no room for a "
                            f"prompt in the model's context of {context} tokens")
    return budget


def recipe_reward(stage_args, config, reward_model, ref_policy, tokenizer) -> CompositeReward:
    """The composite reward of the ppo section. PPO's end-of-turn penalty is PPOConfig's own missing_eos_penalty,
    applied by PPOTrainer; RLOO and GRPO get the same rule from the composite with that weight."""
    return CompositeReward(
        reward_model, ref_policy, tokenizer, end_token_id=tokenizer.eos_token_id,
        weights={"reward_model": stage_args.reward_model_weight, "repetition": stage_args.repetition_weight,
                 "end_of_turn": config.missing_eos_penalty or 0.0, "relevance": stage_args.relevance_weight,
                 "echo": stage_args.echo_weight},
        repetition_ngram=stage_args.repetition_ngram, normalize_reward_model=stage_args.normalize_reward_model,
        reward_model_clip=stage_args.reward_model_clip)


def build_trainer(stage_args, config, tokenizer, policy, ref_policy, composite, reward_files, train_prompts,
                  eval_prompts, max_prompt_tokens, guards):
    """The trainer of `stage_args.algorithm`, with the KL budget's controller on its coefficient when the recipe
    sets a KL target."""
    if stage_args.algorithm == "ppo":
        trainer = build_ppo(config, tokenizer, policy, ref_policy, composite, reward_files, train_prompts,
                            eval_prompts, max_prompt_tokens, guards)
    else:
        trainer = build_group(config, stage_args, tokenizer, policy, ref_policy, composite, train_prompts,
                              max_prompt_tokens, guards)
    if stage_args.kl_target is not None:
        trainer.add_callback(AdaptiveKL(stage_args.kl_target, stage_args.kl_adapt_rate, *kl_coefficient(trainer)))
    return trainer


def kl_coefficient(trainer) -> tuple[object, str]:
    """Where the trainer reads its KL coefficient, as (object, attribute): PPOTrainer `args.kl_coef` at every
    rollout, RLOOTrainer and GRPOTrainer `beta` at every loss."""
    return (trainer.args, "kl_coef") if isinstance(trainer, PPOTrainer) else (trainer, "beta")


def episodes(trainer) -> int:
    """Replies sampled so far, counted alike for every algorithm."""
    if isinstance(trainer, PPOTrainer):
        return trainer.state.episode
    return trainer.state.global_step // trainer.args.num_iterations * trainer.args.generation_batch_size


def trained_policy(trainer):
    """The policy without its wrappers (PPOTrainer trains a policy-and-value wrapper)."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    return getattr(policy, "policy", policy)


def gold_proxy_monitor(labeler, reward_model, tokenizer, eval_dialogs, data_args, stage_args, config,
                       max_prompt_tokens) -> GoldProxyMonitor | None:
    """The gold/proxy monitor on its own held-out prompts, when the run has a labeler."""
    if labeler is None:
        return None
    prompts = prompt_conversations(eval_dialogs, stage_args.context_turns, stage_args.gold_prompts,
                                   data_args.split_seed + 2)
    return GoldProxyMonitor(labeler, reward_model, tokenizer, prompts,
                            chat_generation_config(tokenizer, config.response_length), max_prompt_tokens,
                            stage_args.gold_every, config.seed)
