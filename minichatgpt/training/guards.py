"""What the RL stage watches at every log, for PPO, RLOO and GRPO alike (and DPO, which has no KL to watch):
non-finite values and runaway KL stop the run; reward rising while the replies to fixed prompts lose diversity,
collapse to a few strings or loop is flagged; and a KL budget adapts the KL coefficient."""

import logging
import math

from transformers import TrainerCallback

from minichatgpt.errors import PipelineError
from minichatgpt.evaluation.metrics import load_metric
from minichatgpt.generation import generate_replies

logger = logging.getLogger("minichatgpt.ppo")


def rl_log_values(logs: dict) -> tuple[float, float | None] | None:
    """(mean reward, mean KL to the SFT policy per reply) of a training log of any of the trainers, or None for other
    logs: PPOTrainer logs `objective/scores` and the summed `objective/kl`; RLOOTrainer and GRPOTrainer log `reward` and
    a per-token `kl`, which times `completions/mean_length` is the same summed estimate (log p_policy - log p_SFT
    over the reply). DPOTrainer samples nothing, so it has no KL estimate; its reward is the implicit reward margin
    of chosen over rejected, `rewards/margins`."""
    if "objective/scores" in logs:
        return logs["objective/scores"], logs["objective/kl"]
    if "reward" in logs and "kl" in logs:
        return logs["reward"], logs["kl"] * logs["completions/mean_length"]
    if "rewards/margins" in logs:
        return logs["rewards/margins"], None
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

    def __init__(self, tokenizer, prompts, max_kl: float, max_prompt_tokens: int, max_new_tokens: int,
                 stage: str = "PPO"):
        self.tokenizer, self.prompts, self.max_kl, self.stage = tokenizer, prompts, max_kl, stage
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
            raise PipelineError(f"{self.stage} step {state.global_step}: non-finite {', '.join(bad)}; stopped, "
                                "nothing pushed (lower the learning rate, check the reward model)")
        if kl is not None and kl > self.max_kl:
            raise PipelineError(f"{self.stage} step {state.global_step}: KL to the SFT policy {kl:.2f} > "
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
        if kl is not None:
            state.log_history[-1].update({"objective/scores": score, "objective/kl": kl})
        state.log_history[-1].update(guard_values)
        for kind, message in guard_flags(self.history).items():
            self._warn(state, kind, message)

    def _warn(self, state, kind: str, message: str):
        """Log a kind of warning the first time it shows; count how often it shows again."""
        if kind not in self.warnings:
            logger.warning(f"{self.stage} step {state.global_step}: {kind}: {message}")
            self.warnings[kind] = {"first_step": state.global_step, "first": message, "logs": 0}
        self.warnings[kind]["logs"] += 1

    def warning_lines(self) -> list[str]:
        return [f"{kind}: first at step {w['first_step']} ({w['first']}); seen at {w['logs']} of "
                f"{len(self.history)} logs" for kind, w in self.warnings.items()]

    def print_warnings(self):
        for line in self.warning_lines():
            print(f"guard: {line}")

    def card_list(self) -> str:
        """The warnings as a Markdown list for the model card."""
        return "\n".join(f"- {line}" for line in self.warning_lines()) or "- none raised"

    def record(self) -> dict:
        """What the guards saw, for the hub folder's minichatgpt.json."""
        return {"history": self.history, "warnings": self.warnings}

    def kl_trend(self) -> str:
        if len(self.history) < 2 or self.history[0]["kl"] is None:
            return "not enough logs"
        first, last = self.history[0]["kl"], self.history[-1]["kl"]
        return f"{first:.3f} -> {last:.3f} ({'rising' if last > first else 'flat or falling'})"


class AdaptiveKL(TrainerCallback):
    """The KL budget: after each training log, the KL coefficient grows when the KL to the SFT policy is above
    `target` and shrinks when below, by at most `rate` of itself (the proportional controller of Ziegler et al.,
    2019). The coefficient is the attribute `name` of `holder`, where the trainer reads it: PPOTrainer reads
    `args.kl_coef` at every rollout, RLOOTrainer and GRPOTrainer `trainer.beta` at every loss."""

    def __init__(self, target: float, rate: float, holder, name: str):
        self.target, self.rate, self.holder, self.name = target, rate, holder, name

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = rl_log_values(logs or {})
        if values is None:
            return
        error = max(-1.0, min(1.0, values[1] / self.target - 1.0))
        setattr(self.holder, self.name, getattr(self.holder, self.name) * (1.0 + self.rate * error))
        state.log_history[-1]["objective/kl_coef"] = getattr(self.holder, self.name)
