"""RLHF: PPO (trl.experimental.ppo.PPOTrainer, trl==1.12.0) or RLOO (trl.RLOOTrainer) moves the SFT policy toward a
higher composite reward (reward model + repetition, end-of-turn and relevance terms, pipeline/rewards.py) under a KL
leash; pushes {hub_dir}/{run_name}-ppo, the chat model, whichever the algorithm.

    accelerate launch pipeline/ppo.py --config recipes/smoke.yaml [--algorithm rloo --seed 1 --kl_coef 0.1]
"""

import logging
import math
import time
from dataclasses import fields

from accelerate import PartialState
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from trl import RLOOConfig, RLOOTrainer
from trl.experimental.ppo import PPOTrainer

from eval.metrics import load_metric
from pipeline.common import (
    chat_generation_config,
    fit_history,
    generate_replies,
    last_logged,
    load_model,
    load_tokenizer,
    metrics_table,
    plot_curves,
    render_prompts,
    run_stage,
    score_conversations,
    trainer_defaults,
)
from pipeline.data import load_dialogs, prompt_reply_pairs, split_eval
from pipeline.errors import PipelineError
from pipeline.hub import card_metadata, check_writable, push
from pipeline.rewards import CompositeReward, PPORewardModel, rloo_reward_funcs

logger = logging.getLogger("minichatgpt.ppo")


def prompt_conversations(dialogs, context_turns: int, limit: int | None) -> list[list[dict]]:
    """Conversation prefixes of at most `context_turns` turns that end at a user turn followed by a reply."""
    prompts = [history for history, _ in prompt_reply_pairs(dialogs["messages"], context_turns)]
    return prompts if limit is None else prompts[:limit]


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


def rl_log_values(logs: dict) -> tuple[float, float] | None:
    """(mean reward, mean KL to the SFT policy per reply) of a training log of either trainer, or None for other logs:
    PPOTrainer logs `objective/scores` and the summed `objective/kl`; RLOOTrainer logs `reward` and a per-token `kl`,
    which times `completions/mean_length` is the same summed estimate (log p_policy - log p_SFT over the reply)."""
    if "objective/scores" in logs:
        return logs["objective/scores"], logs["objective/kl"]
    if "reward" in logs and "kl" in logs:
        return logs["reward"], logs["kl"] * logs["completions/mean_length"]
    return None


GUARD_WINDOW = 3


def guard_flags(history: list[dict], window: int = GUARD_WINDOW) -> dict[str, str]:
    """The guards' warnings for a history of logs, comparing means over the first and the last `window` logs:
    "possible reward hacking" when the reward rose while the distinct-2 of the replies to the fixed prompts fell below
    0.9 of its start; "collapse" when the share of distinct replies fell to half its start or less; "loops" when the
    replies' repeated-3-gram rate rose by more than 0.1 and by half of its start (a policy can loop inside each reply
    while the replies stay as different from each other as before: a quickstart PPO run at temperature 0.7 looped in
    0.43 of its 3-grams, SFT 0.17, with neither of the other flags). Means over windows, because one log's reward (one
    rollout batch) and one log's replies are noisy: compared log by log on 8 prompts, 4 of 6 quickstart runs were
    flagged whose replies to 200 held-out prompts were no less varied than SFT's."""
    if len(history) < 2 * window:
        return {}
    start, now = history[:window], history[-window:]

    def means(key):
        return sum(row[key] for row in start) / window, sum(row[key] for row in now) / window

    (score, score_now), (distinct, distinct_now), (unique, unique_now), (loops, loops_now) = (
        means("score"), means("distinct_2"), means("unique_replies"), means("repeated_3gram"))
    flags = {}
    if score_now > score and distinct_now < 0.9 * distinct:
        flags["possible reward hacking"] = (f"reward up ({score:.3f} -> {score_now:.3f}) while distinct-2 of the "
                                            f"replies fell ({distinct:.3f} -> {distinct_now:.3f})")
    if unique_now <= 0.5 * unique:
        flags["collapse"] = f"distinct replies to the fixed prompts fell from {unique:.0%} to {unique_now:.0%}"
    if loops_now > loops + 0.1 and loops_now > 1.5 * loops:
        flags["loops"] = f"repeated 3-grams in the replies to the fixed prompts rose from {loops:.2f} to {loops_now:.2f}"
    for kind in flags:
        flags[kind] += f", means of the first and last {window} logs"
    return flags


class RLHFGuards(TrainerCallback):
    """Watches the known failure modes of small-model RLHF at every log: non-finite values and runaway KL stop the
    run; reward rising while the replies to fixed prompts lose diversity, collapse to a few strings or loop is flagged."""

    def __init__(self, tokenizer, prompts, max_kl: float, max_prompt_tokens: int, max_new_tokens: int):
        self.tokenizer, self.prompts, self.max_kl = tokenizer, prompts, max_kl
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self.distinct, self.repeated = load_metric("distinct_n"), load_metric("repeated_ngrams")
        self.history, self.warnings = [], {}

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        values = rl_log_values(logs or {})
        if values is None:
            return
        score, kl = values
        bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise PipelineError(f"PPO step {state.global_step}: non-finite {', '.join(bad)}; stopped, nothing pushed "
                                "(lower the learning rate, check the reward model)")
        if kl > self.max_kl:
            raise PipelineError(f"PPO step {state.global_step}: KL to the SFT policy {kl:.2f} > "
                                f"ppo.max_kl={self.max_kl}; stopped, nothing pushed (raise kl_coef)")
        policy = getattr(model, "policy", model)  # PPOTrainer's model wraps policy and value model
        training = policy.training
        replies = generate_replies(policy, self.tokenizer, self.prompts, max_prompt_tokens=self.max_prompt_tokens,
                                   do_sample=False, repetition_penalty=1.0, max_new_tokens=self.max_new_tokens,
                                   eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        policy.train(training)
        row = {
            "step": state.global_step,
            "score": score,
            "kl": kl,
            "distinct_2": self.distinct.compute(predictions=replies)["distinct_2"],
            "unique_replies": len(set(replies)) / len(replies),
            "repeated_3gram": self.repeated.compute(predictions=replies, n=3)["repeated_ngram_rate"],
            "reply_words": sum(len(r.split()) for r in replies) / len(replies),
        }
        self.history.append(row)
        guard_values = {f"guard/{k}": v for k, v in row.items() if k not in ("step", "score", "kl")}
        logs.update(guard_values)
        # The same keys in the log history for both algorithms: the model card's plot and eval/run.py read them.
        state.log_history[-1].update({"objective/scores": score, "objective/kl": kl, **guard_values})
        for kind, message in guard_flags(self.history).items():
            self._warn(state, kind, message)

    def _warn(self, state, kind: str, message: str):
        """Log a kind of warning the first time it shows; count how often it shows again."""
        if kind not in self.warnings:
            logger.warning(f"PPO step {state.global_step}: {kind}: {message}")
            self.warnings[kind] = {"first_step": state.global_step, "first": message, "logs": 0}
        self.warnings[kind]["logs"] += 1

    def warning_lines(self) -> list[str]:
        return [f"{kind}: first at step {w['first_step']} ({w['first']}); seen at {w['logs']} of "
                f"{len(self.history)} logs" for kind, w in self.warnings.items()]

    def kl_trend(self) -> str:
        if len(self.history) < 2:
            return "not enough logs"
        first, last = self.history[0]["kl"], self.history[-1]["kl"]
        return f"{first:.3f} -> {last:.3f} ({'rising' if last > first else 'flat or falling'})"


class AdaptiveKL(TrainerCallback):
    """The KL budget: after each training log, the KL coefficient grows when the KL to the SFT policy is above
    `target` and shrinks when below, by at most `rate` of itself (the proportional controller of Ziegler et al.,
    2019). `read` and `write` reach the trainer's coefficient: PPOTrainer reads `args.kl_coef` at every rollout,
    RLOOTrainer `trainer.beta`."""

    def __init__(self, target: float, rate: float, read, write):
        self.target, self.rate, self.read, self.write = target, rate, read, write

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = rl_log_values(logs or {})
        if values is None:
            return
        error = max(-1.0, min(1.0, values[1] / self.target - 1.0))
        self.write(self.read() * (1.0 + self.rate * error))
        state.log_history[-1]["objective/kl_coef"] = self.read()


def compare(sft, ppo, reward_model, tokenizer, prompts, max_prompt_tokens, max_new_tokens) -> tuple[dict, list]:
    """SFT vs PPO replies (greedy) to held-out prompts, judged by the reward model."""
    settings = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": max_new_tokens,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    replies = {name: generate_replies(model, tokenizer, prompts, max_prompt_tokens=max_prompt_tokens, **settings)
               for name, model in (("sft", sft), ("ppo", ppo))}
    scores = {name: score_conversations(reward_model, tokenizer,
                                        [p + [{"role": "assistant", "content": r}] for p, r in zip(prompts, rs)])
              for name, rs in replies.items()}
    distinct = load_metric("distinct_n")
    result = {"win_rate": load_metric("win_rate").compute(predictions=scores["ppo"],
                                                          references=scores["sft"])["win_rate"]}
    for name in ("sft", "ppo"):
        result[f"{name}_mean_reward"] = sum(scores[name]) / len(scores[name])
        result[f"{name}_reply_words"] = sum(len(r.split()) for r in replies[name]) / len(replies[name])
        for key, value in distinct.compute(predictions=replies[name]).items():
            result[f"{name}_{key}"] = value
    samples = [(p[-1]["content"], s, q) for p, s, q in zip(prompts, replies["sft"], replies["ppo"])]
    return {k: round(v, 4) for k, v in result.items()}, samples


def rloo_config(config, stage_args, reward_weights: list[float]) -> RLOOConfig:
    """RLOO's settings from the same `ppo` section: the training arguments as they are, and PPO's knobs under their
    RLOO names. Both count `total_episodes` as replies sampled; a batch of replies is used num_ppo_epochs times."""
    replies_per_batch = (config.per_device_train_batch_size * config.gradient_accumulation_steps
                         * PartialState().num_processes)
    if replies_per_batch % stage_args.rloo_num_generations:
        raise PipelineError(f"ppo.rloo_num_generations ({stage_args.rloo_num_generations}) must divide the replies "
                            f"per batch, per_device_train_batch_size x gradient_accumulation_steps x processes "
                            f"({replies_per_batch})")
    if config.kl_coef <= 0:
        raise PipelineError("ppo.kl_coef must be above 0 with algorithm rloo: its KL to the SFT policy is only "
                            "measured when it is penalised, and the guards watch it")
    training = {f.name: getattr(config, f.name) for f in fields(TrainingArguments) if f.init}
    training["max_steps"] = math.ceil(config.total_episodes / replies_per_batch) * config.num_ppo_epochs
    return RLOOConfig(**training, beta=config.kl_coef, max_completion_length=config.response_length,
                      temperature=config.temperature, top_k=0, num_generations=stage_args.rloo_num_generations,
                      num_iterations=config.num_ppo_epochs, epsilon=config.cliprange, reward_weights=reward_weights)


def main(recipe, overrides):
    data_args, stage_args, config = recipe.parse_stage(
        "ppo", overrides,
        defaults=trainer_defaults(stop_token="eos", missing_eos_penalty=1.0, num_sample_generations=0,
                                  learning_rate=1e-5, kl_coef=0.05, temperature=1.0, response_length=32,
                                  save_strategy="no", logging_steps=1),
    )
    set_seed(config.seed)
    check_writable(recipe.run.hub_dir)
    sft_path, reward_path = recipe.hub_path("sft"), recipe.hub_path("reward")
    config.sft_model_path, config.reward_model_path = str(sft_path), str(reward_path)
    tokenizer = load_tokenizer(sft_path, "SFT model's tokenizer")
    reward_tokenizer = load_tokenizer(reward_path, "reward model's tokenizer")
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise PipelineError(f"{reward_path}: the reward model was built for another tokenizer than {sft_path}; "
                            "train the reward model from this run's SFT model")
    tokenizer.padding_side = "left"
    policy = load_model(sft_path, AutoModelForCausalLM, "SFT model", tokenizer=tokenizer)
    # Rollouts must sample from the policy's plain distribution: the chat defaults (repetition penalty, top-p) would
    # make the sampled log-probs disagree with the training forward pass and bias the ratio and the KL.
    policy.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    ref_policy = load_model(sft_path, AutoModelForCausalLM, "SFT model")
    reward_model = load_model(reward_path, AutoModelForSequenceClassification, "reward model", tokenizer=tokenizer,
                              num_labels=1)
    context = policy.config.max_position_embeddings
    max_prompt_tokens = min(stage_args.max_prompt_length, context - config.response_length)
    if max_prompt_tokens <= 0:
        raise PipelineError(f"{recipe.path}: ppo.response_length ({config.response_length}) leaves no room for a "
                            f"prompt in the model's context of {context} tokens")

    train_dialogs, eval_dialogs = split_eval(load_dialogs(data_args), data_args)
    train_prompts = prompt_conversations(train_dialogs, stage_args.context_turns, stage_args.max_prompts)
    eval_prompts = prompt_conversations(eval_dialogs, stage_args.context_turns, stage_args.compare_prompts)
    if not train_prompts or not eval_prompts:
        raise PipelineError("no prompts: the dialogs have no user turn followed by an assistant reply")

    # PPO's end-of-turn penalty is PPOConfig's own missing_eos_penalty, applied by PPOTrainer; RLOO gets the same
    # rule from the composite with that weight.
    composite = CompositeReward(
        reward_model, ref_policy, tokenizer, end_token_id=tokenizer.eos_token_id,
        weights={"reward_model": stage_args.reward_model_weight, "repetition": stage_args.repetition_weight,
                 "end_of_turn": config.missing_eos_penalty or 0.0, "relevance": stage_args.relevance_weight},
        repetition_ngram=stage_args.repetition_ngram, normalize_reward_model=stage_args.normalize_reward_model,
        reward_model_clip=stage_args.reward_model_clip)
    guards = RLHFGuards(tokenizer, eval_prompts[: stage_args.guard_prompts], stage_args.max_kl, max_prompt_tokens,
                        config.response_length)
    if stage_args.algorithm == "ppo":
        train_set = Dataset.from_dict({"input_ids": render_prompts(tokenizer, train_prompts, max_prompt_tokens)})
        eval_set = Dataset.from_dict({"input_ids": render_prompts(tokenizer, eval_prompts, max_prompt_tokens)})
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=PPORewardModel(composite, tokenizer.convert_tokens_to_ids("<|end|>"),
                                        tokenizer.convert_tokens_to_ids("<|assistant|>")),
            value_model=load_model(reward_path, AutoModelForSequenceClassification, "reward model", num_labels=1),
            train_dataset=train_set,
            eval_dataset=eval_set,
            callbacks=[guards],
        )
        kl_coef = (lambda: trainer.args.kl_coef, lambda value: setattr(trainer.args, "kl_coef", value))
    else:
        train_set = Dataset.from_dict({"prompt": fit_conversations(tokenizer, train_prompts, max_prompt_tokens)})
        reward_funcs, reward_weights = rloo_reward_funcs(composite)
        trainer = RLOOTrainer(model=policy, reward_funcs=reward_funcs,
                              args=rloo_config(config, stage_args, reward_weights), train_dataset=train_set,
                              processing_class=tokenizer, callbacks=[guards])
        for model in (ref_policy, reward_model):
            model.to(trainer.accelerator.device)
        kl_coef = (lambda: trainer.beta, lambda value: setattr(trainer, "beta", value))
    print(f"{stage_args.algorithm} data: {len(train_set)} training prompts, {len(eval_prompts)} held-out prompts")
    if stage_args.kl_target is not None:
        trainer.add_callback(AdaptiveKL(stage_args.kl_target, stage_args.kl_adapt_rate, *kl_coef))

    start = time.time()
    trainer.train()
    wall = time.time() - start

    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy = getattr(policy, "policy", policy)
    policy.generation_config = chat_generation_config(tokenizer)
    comparison, samples = compare(ref_policy, policy, reward_model, tokenizer, eval_prompts, max_prompt_tokens,
                                  config.response_length)
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
    for line in guards.warning_lines():
        print(f"guard: {line}")
    if not trainer.is_world_process_zero():
        return

    def write(folder):
        policy.save_pretrained(folder)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"objective/scores": "composite reward", "objective/kl": "KL to SFT"},
                    folder / "ppo_curve.png", f"{recipe.hub_name('ppo')} {stage_args.algorithm.upper()}")

    sample_rows = "\n".join(f"| {p} | {s} | {q} |" for p, s, q in samples[:8])
    guard_lines = "\n".join(f"- {line}" for line in guards.warning_lines()) or "- none raised"
    name = recipe.hub_name("ppo")
    trainer_name = ("PPO (TRL `trl.experimental.ppo.PPOTrainer`, trl 1.12.0)" if stage_args.algorithm == "ppo" else
                    f"RLOO (TRL `trl.RLOOTrainer`, {stage_args.rloo_num_generations} replies per prompt)")
    weights = ", ".join(f"{part} {weight}" for part, weight in composite.weights.items())
    body = f"""# {name}

The chat model of the minichatgpt run `{recipe.run_name}`: `{sft_path}` trained with {trainer_name} against a
composite reward (weights: {weights}; reward model `{reward_path}`, standardised:
{stage_args.normalize_reward_model}), with a KL penalty (kl_coef={config.kl_coef}, KL target {stage_args.kl_target}) to
the SFT policy. {episodes} episodes sampled at temperature {config.temperature}, response length
{config.response_length}, {config.num_ppo_epochs} epochs per batch, seed {config.seed}.

## {stage_args.algorithm.upper()} vs SFT on {len(eval_prompts)} held-out prompts (greedy replies, judged by the reward model)

{metrics_table(metrics)}

## Guards

KL trend: {guards.kl_trend()}. Warnings:
{guard_lines}

## Sample replies

| prompt | SFT | PPO |
|---|---|---|
{sample_rows}

![PPO reward and KL](ppo_curve.png)
"""
    target = push(recipe.run.hub_dir, name, write,
                  metadata={"stage": "ppo", "algorithm": stage_args.algorithm, "seed": config.seed,
                            "temperature": config.temperature, "reward_weights": composite.weights,
                            "parent": recipe.hub_name("sft"), "recipe": str(recipe.path),
                            "metrics": metrics, "log_history": trainer.state.log_history,
                            "guards": {"history": guards.history, "warnings": guards.warnings},
                            "samples": samples, "fingerprint": recipe.fingerprint("ppo", overrides)},
                  card_body=body,
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(str(sft_path), data_args.dialog_sources, recipe.path, metrics,
                                              "text-generation"))
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
