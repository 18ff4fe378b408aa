"""Gold and proxy during RL, the setup of Gao et al. 2022 ("Scaling laws for reward model overoptimization"): the
labeler is the gold judge, the reward model its learned proxy. Every few steps the policy replies to fixed held-out
prompts at the chat's decoding, both judge the replies, and both are logged beside the KL to the SFT policy.
Over-optimisation shows as the proxy rising while the gold falls."""

import statistics

import torch
from transformers import TrainerCallback

from minichatgpt.generation import ended, generate_reply_ids, reply_texts, score_sequences
from minichatgpt.training.guards import rl_log_values

# Measurements over a run when the recipe does not say how often.
DEFAULT_MEASUREMENTS = 8


class GoldProxyMonitor(TrainerCallback):
    def __init__(self, labeler, reward_model, tokenizer, prompts: list[list[dict]], generation_config,
                 max_prompt_tokens: int, every: int | None = None, seed: int = 0):
        self.labeler, self.reward_model, self.tokenizer, self.prompts = labeler, reward_model, tokenizer, prompts
        self.generation_config, self.max_prompt_tokens = generation_config, max_prompt_tokens
        self.every, self.seed = every, seed
        self.history: list[dict] = []
        self.kl_logs: list[float] = []

    def measure(self, policy) -> tuple[list[float], list[float]]:
        """The labeler's and the reward model's scores of the policy's replies to the prompts, sampled with the same
        seed each time (and the training's random state left as it was)."""
        training = policy.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            prompt_ids, reply_ids = generate_reply_ids(policy, self.tokenizer, self.prompts, batch_size=64,
                                                       max_prompt_tokens=self.max_prompt_tokens,
                                                       generation_config=self.generation_config)
        policy.train(training)
        gold = self.labeler.score(self.prompts, reply_texts(self.tokenizer, reply_ids), ended(self.tokenizer, reply_ids))
        proxy = score_sequences(self.reward_model, [p + r for p, r in zip(prompt_ids, reply_ids)],
                                self.tokenizer.pad_token_id)
        return gold, proxy

    def record(self, step: int, kl: float | None, policy):
        gold, proxy = self.measure(policy)
        row = {"step": step, "kl": kl, "gold": statistics.fmean(gold), "proxy": statistics.fmean(proxy)}
        if self.history:
            first = self.history[0]
            # Gains over the SFT policy in standard deviations of its replies' scores, so the two share an axis.
            row["gold_gain"] = (row["gold"] - first["gold"]) / first["gold_sd"]
            row["proxy_gain"] = (row["proxy"] - first["proxy"]) / first["proxy_sd"]
        else:
            row |= {"gold_sd": max(statistics.pstdev(gold), 1e-6), "proxy_sd": max(statistics.pstdev(proxy), 1e-6),
                    "gold_gain": 0.0, "proxy_gain": 0.0}
        self.history.append(row)
        return row

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.every is None:
            self.every = max(1, (state.max_steps or DEFAULT_MEASUREMENTS) // DEFAULT_MEASUREMENTS)
        self.record(0, 0.0, getattr(model, "policy", model))

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        values = rl_log_values(logs or {})
        if values is None or values[1] is None:
            return
        self.kl_logs.append(values[1])
        last = self.history[-1]["step"] if self.history else 0
        if state.global_step - last < self.every:
            return
        # A log's KL is one batch's estimate and moves a lot from one to the next: the mean of the logs since the
        # last measurement is the curve's x.
        kl = statistics.fmean(self.kl_logs)
        self.kl_logs = []
        row = self.record(state.global_step, kl, getattr(model, "policy", model))
        state.log_history[-1].update({"gold/labeler": row["gold"], "gold/reward_model": row["proxy"]})

    def curve_lines(self) -> str:
        """The curve as a Markdown table for the model card and the report."""
        rows = "\n".join(f"| {r['step']} | {r['kl']:.2f} | {r['gold']:.4f} | {r['gold_gain']:+.2f} | {r['proxy']:.3f} | "
                         f"{r['proxy_gain']:+.2f} |" for r in self.history if r["kl"] is not None)
        return ("| step | KL to SFT (mean of the logs since the last row) | gold (labeler) | gold gain (SD) | proxy (reward model) | proxy gain (SD) |\n"
                "|---|---|---|---|---|---|\n" + rows)


def plot_gold_proxy(history: list[dict], path, title: str):
    """Gold and proxy gains over the SFT policy against KL to SFT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in history if r["kl"] is not None]
    if len(points) < 2:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    kl = [r["kl"] for r in points]
    axis.plot(kl, [r["gold_gain"] for r in points], "o-", label="gold: the labeler")
    axis.plot(kl, [r["proxy_gain"] for r in points], "s--", label="proxy: the reward model")
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set_xlabel("KL to the SFT policy (nats per reply)")
    axis.set_ylabel("score gain over SFT (SFT replies' SD)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
