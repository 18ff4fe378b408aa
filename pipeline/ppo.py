"""RLHF: PPO (TRL, trl==1.12.0) moves the SFT policy toward higher reward-model scores under a KL leash;
pushes {hub_dir}/{run_name}-ppo, the chat model.

    accelerate launch pipeline/ppo.py --config recipes/smoke.yaml [--kl_coef 0.1 --total_episodes 2000]
"""

import logging
import math
import time

from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    TrainerCallback,
    set_seed,
)
from trl.experimental.ppo import PPOTrainer

from eval.metrics import load_metric
from pipeline.common import (
    chat_generation_config,
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

logger = logging.getLogger("minichatgpt.ppo")


def prompt_conversations(dialogs, context_turns: int, limit: int | None) -> list[list[dict]]:
    """Conversation prefixes of at most `context_turns` turns that end at a user turn followed by a reply."""
    prompts = [history for history, _ in prompt_reply_pairs(dialogs["messages"], context_turns)]
    return prompts if limit is None else prompts[:limit]


class RLHFGuards(TrainerCallback):
    """Watches the known failure modes of small-model RLHF at every log: non-finite values and runaway KL stop the
    run; reward rising while the replies to fixed prompts lose diversity or collapse to a few strings is flagged."""

    def __init__(self, tokenizer, prompts, max_kl: float, max_prompt_tokens: int, max_new_tokens: int):
        self.tokenizer, self.prompts, self.max_kl = tokenizer, prompts, max_kl
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self.distinct = load_metric("distinct_n")
        self.history, self.warnings = [], {}

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "objective/scores" not in logs:
            return
        bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise PipelineError(f"PPO step {state.global_step}: non-finite {', '.join(bad)}; stopped, nothing pushed "
                                "(lower the learning rate, check the reward model)")
        if logs["objective/kl"] > self.max_kl:
            raise PipelineError(f"PPO step {state.global_step}: KL to the SFT policy {logs['objective/kl']:.2f} > "
                                f"ppo.max_kl={self.max_kl}; stopped, nothing pushed (raise kl_coef)")
        replies = generate_replies(model.policy, self.tokenizer, self.prompts, max_prompt_tokens=self.max_prompt_tokens,
                                   do_sample=False, repetition_penalty=1.0, max_new_tokens=self.max_new_tokens,
                                   eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        row = {
            "step": state.global_step,
            "score": logs["objective/scores"],
            "kl": logs["objective/kl"],
            "distinct_2": self.distinct.compute(predictions=replies)["distinct_2"],
            "unique_replies": len(set(replies)) / len(replies),
            "reply_words": sum(len(r.split()) for r in replies) / len(replies),
        }
        first = self.history[0] if self.history else row
        self.history.append(row)
        logs.update({f"guard/{k}": v for k, v in row.items() if k not in ("step", "score", "kl")})
        if row["score"] > first["score"] and row["distinct_2"] < 0.9 * first["distinct_2"]:
            self._warn(state, "possible reward hacking",
                       f"reward up ({first['score']:.3f} -> {row['score']:.3f}) while distinct-2 of the replies fell "
                       f"({first['distinct_2']:.3f} -> {row['distinct_2']:.3f})")
        if row["unique_replies"] <= 0.5 < first["unique_replies"]:
            self._warn(state, "collapse", f"replies to {len(replies)} different prompts collapsed to "
                                          f"{len(set(replies))} distinct strings")

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
    value_model = load_model(reward_path, AutoModelForSequenceClassification, "reward model", num_labels=1)
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
    train_set = Dataset.from_dict({"input_ids": render_prompts(tokenizer, train_prompts, max_prompt_tokens)})
    eval_set = Dataset.from_dict({"input_ids": render_prompts(tokenizer, eval_prompts, max_prompt_tokens)})
    print(f"ppo data: {len(train_set)} training prompts, {len(eval_set)} held-out prompts")

    guards = RLHFGuards(tokenizer, eval_prompts[: stage_args.guard_prompts], stage_args.max_kl, max_prompt_tokens,
                        config.response_length)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_set,
        eval_dataset=eval_set,
        callbacks=[guards],
    )
    start = time.time()
    trainer.train()
    wall = time.time() - start

    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    policy.generation_config = chat_generation_config(tokenizer)
    comparison, samples = compare(ref_policy, policy, reward_model, tokenizer, eval_prompts, max_prompt_tokens,
                                  config.response_length)
    final_kl = last_logged(trainer.state.log_history, "objective/kl")
    metrics = {
        **comparison,
        "final_kl": round(final_kl, 4) if final_kl is not None else None,
        "episodes": trainer.state.episode,
        "wall_seconds": round(wall, 1),
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    print("ppo summary: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    for line in guards.warning_lines():
        print(f"guard: {line}")
    if not trainer.is_world_process_zero():
        return

    def write(folder):
        policy.save_pretrained(folder)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(folder)
        plot_curves(trainer.state.log_history, {"objective/scores": "reward-model score", "objective/kl": "KL to SFT"},
                    folder / "ppo_curve.png", f"{recipe.hub_name('ppo')} PPO")

    sample_rows = "\n".join(f"| {p} | {s} | {q} |" for p, s, q in samples[:8])
    guard_lines = "\n".join(f"- {line}" for line in guards.warning_lines()) or "- none raised"
    name = recipe.hub_name("ppo")
    body = f"""# {name}

The chat model of the minichatgpt run `{recipe.run_name}`: `{sft_path}` trained with PPO (TRL
`trl.experimental.ppo.PPOTrainer`, trl 1.12.0) against the reward model `{reward_path}`, with a KL penalty
(kl_coef={config.kl_coef}) to the SFT policy. {trainer.state.episode} episodes, response length
{config.response_length}, {config.num_ppo_epochs} PPO epochs per batch.

## PPO vs SFT on {len(eval_prompts)} held-out prompts (greedy replies, judged by the reward model)

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
                  metadata={"stage": "ppo", "parent": recipe.hub_name("sft"), "recipe": str(recipe.path),
                            "metrics": metrics, "log_history": trainer.state.log_history,
                            "guards": {"history": guards.history, "warnings": guards.warnings},
                            "samples": samples, "fingerprint": recipe.fingerprint("ppo", overrides)},
                  card_body=body,
                  card_metadata=card_metadata(str(sft_path), data_args.dialog_sources, recipe.path, metrics,
                                              "text-generation"))
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
