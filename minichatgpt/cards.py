"""Publishing a trained model: its files, its card (each stage's template filled with the stage's own facts) and its
record, pushed to the hub in one step."""

import os
from pathlib import Path

from minichatgpt.hub import card_metadata, push
from minichatgpt.recipe import split_settings
from minichatgpt.training.defaults import precision_label
from minichatgpt.training.logs import metrics_table, plot_curves

TEMPLATES = {
    "tokenizer": """# {name}

Byte-level BPE tokenizer of the minichatgpt run `{run_name}`, trained with `tokenizers` on
{documents} documents ({megabytes:.1f} MB) of {sources}.

Special tokens: {special_tokens}. The chat template renders
`<|role|>content<|end|>` per turn and `<|assistant|>` as the generation prompt.

{metrics_table}
""",
    "pretrain": """# {name}

GPT-2 ({n_layer} layers, width {n_embd}, {n_head} heads, context {n_positions},
{millions:.2f}M parameters) pretrained from scratch by minichatgpt on {sources}
with the tokenizer `{tokenizer}`.

{metrics_table}

![loss curve](loss_curve.png)
""",
    "sft": """# {name}

`{base}` fine-tuned by minichatgpt with TRL `SFTTrainer` on {sources}
(loss on assistant tokens only{lora}).
Held-out reply perplexity went from {perplexity_before} to {perplexity_after}.

{metrics_table}

## Data

{data_card}

## Sample replies (greedy, repetition penalty 1.2)

| prompt | base model | after SFT |
|---|---|---|
{samples}

![loss curve](loss_curve.png)
""",
    "reward": """# {name}

Reward model of the minichatgpt run `{run_name}`: `{sft}` with a scalar head
(`AutoModelForSequenceClassification`, `num_labels=1`), trained with TRL `RewardTrainer`.

Pairs: {pairs}.

## Held-out pairwise accuracy

| rejected kind | pairs | before training | after training | mean margin |
|---|---|---|---|---|
{accuracy_rows}
{agreement}
{metrics_table}

## Use

```python
from transformers import AutoTokenizer, pipeline
tokenizer = AutoTokenizer.from_pretrained("{path}")
score = pipeline("text-classification", model="{path}", function_to_apply="none")
text = tokenizer.apply_chat_template(
    [{{"role": "user", "content": "how are you ?"}}, {{"role": "assistant", "content": "good , you ?"}}], tokenize=False)
print(score(text)[0]["score"])
```

![training curve](training_curve.png)
""",
    "ppo": """# {name}

The chat model of the minichatgpt run `{run_name}`: `{sft}` trained with {trainer}
against a composite reward (weights: {weights}; reward model `{reward}`, {scale}), with a KL
penalty (kl_coef={kl_coef}, KL target {kl_target}) to the SFT policy. {episodes} episodes
sampled at temperature {temperature}, response length {response_length}, {epochs}
epochs per batch, seed {seed}.

## {algorithm} vs SFT on {prompts} held-out prompts (greedy replies)

`ppo_win_rate` is the reward model's verdict, in-distribution since the stage maximised it; `ppo_gold_win_rate` is
the labeler's, whose judgement the reward model learned (both with standard errors, ties counted half). The evaluation
report (`eval/run.py`) adds a judge the stage never saw.

{metrics_table}
{gold_proxy}
## Guards

KL trend: {kl_trend}. Warnings:
{warnings}

## Sample replies

| prompt | SFT | {algorithm} |
|---|---|---|
{samples}

![{algorithm} reward and KL](rl_curve.png)
""",
    "gold_proxy": """
## Gold and proxy

Every {every} steps the policy replied to {prompts} held-out prompts at the chat's decoding; the
labeler `{labeler}` (gold) and the reward model (its learned proxy) judged the replies. Over-optimisation
shows as the proxy rising while the gold falls.

{curve}

![gold vs proxy](gold_proxy.png)
""",
    "dpo": """# {name}

Chat model of the minichatgpt run `{run_name}`: `{sft}` trained with TRL `DPOTrainer` (loss
{loss_type}, beta {beta}) on preference pairs, with the SFT model as reference; no reward model, no
sampling. {steps} steps, seed {seed}.

Pairs: {pairs}.

## Held-out pairs

Accuracy: how often DPO's implicit reward, beta · log(p_DPO / p_SFT) of a reply, ranks the chosen reply above the
rejected one; margin: its mean difference. SFT likelihood: how often the SFT model alone finds the chosen reply
likelier, what the pairs ask of a model before DPO.

| rejected kind | pairs | SFT likelihood accuracy | DPO accuracy | mean margin |
|---|---|---|---|---|
{accuracy_rows}

{metrics_table}

Guards, on the greedy replies to {guard_prompts} held-out prompts at every log (loops, collapse, the implicit
reward margin rising while the replies lose diversity):
{warnings}

## Sample replies (greedy, repetition penalty 1.2)

| prompt | SFT | DPO |
|---|---|---|
{samples}

![training curve](training_curve.png)
""",
}

TASKS = {"reward": "text-classification"}


def sample_rows(*columns) -> str:
    """Table rows of a card, one per prompt: the prompt and each model's reply."""
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in zip(*columns))


def model_files(model, tokenizer, log_history: list[dict], curves: dict[str, str], plot: str, title: str,
                *more_plots):
    """What `publish` saves of a trained model: its weights, its tokenizer, a plot of the logged `curves` (a log key
    and its label each) named `plot`, and whatever `more_plots` draw into the folder."""

    def save(folder: Path):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        plot_curves(log_history, curves, folder / plot, title)
        for draw in more_plots:
            draw(folder)

    return save


def publish(recipe, stage: str, overrides: list[str], save, *, metrics: dict, facts: dict, data_args,
            sources: list[str], base: str | os.PathLike | None = None, parent: str | None = None,
            training_args=None, record: dict | None = None) -> Path:
    """Push the model that `save(folder)` writes as the stage's hub name, with its card (the stage's template
    filled with `facts`, the run's name and the metrics table), the card's metadata (`base`: the model it was trained
    from) and a record of how it was made: the stage, `parent` (by default `base`'s name), the recipe, the data split,
    the metrics, `record` and the settings' fingerprint."""
    name = recipe.hub_name(stage)
    body = TEMPLATES[stage].format(name=name, run_name=recipe.run_name, metrics_table=metrics_table(metrics),
                                   **facts)
    parent = parent or (Path(base).name if base else None)
    target = push(recipe.run.hub_dir, name, save,
                  metadata={"stage": stage, "parent": parent, "recipe": str(recipe.path),
                            "data_split": split_settings(data_args), "metrics": metrics, **(record or {}),
                            "fingerprint": recipe.fingerprint(stage, overrides)},
                  card_body=body,
                  keep_revisions=recipe.run.keep_revisions,
                  card_metadata=card_metadata(str(base) if base else None, sources, recipe.path, metrics,
                                              TASKS.get(stage, "text-generation"),
                                              precision_label(training_args) if training_args else None))
    print(f"pushed {target}")
    return target


ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}


def rl_facts(recipe, stage_args, config, composite, guards, monitor, episodes: int, prompts: int, samples) -> dict:
    """The RL card's facts: which trainer, the reward's parts and scale, the KL leash, the gold/proxy curve and the
    guards' findings, and sample replies (prompt, SFT's, the policy's)."""
    algorithm = stage_args.algorithm
    trainer = {
        "ppo": "PPO (TRL `trl.experimental.ppo.PPOTrainer`, trl 1.12.0)",
        "rloo": f"RLOO (TRL `trl.RLOOTrainer`, {stage_args.rloo_num_generations} replies per prompt)",
        "grpo": f"GRPO (TRL `trl.GRPOTrainer`, {stage_args.grpo_num_generations} replies per prompt, loss "
                f"`{stage_args.grpo_loss_type}`)",
    }[algorithm]
    scale = (f"standardised by mean {composite.reward_model_scale[0]:.3f} and std {composite.reward_model_scale[1]:.3f} "
             f"of {stage_args.reward_scale_rollouts} warm-up rollouts" if composite.reward_model_scale else "raw")
    gold_proxy = "" if monitor is None else TEMPLATES["gold_proxy"].format(
        every=monitor.every, prompts=len(monitor.prompts), labeler=monitor.labeler.name, curve=monitor.curve_lines())
    return {"sft": recipe.hub_path("sft"), "reward": recipe.hub_path("reward"), "trainer": trainer,
            "weights": ", ".join(f"{part} {weight}" for part, weight in composite.weights.items()), "scale": scale,
            "kl_coef": config.kl_coef, "kl_target": stage_args.kl_target, "episodes": episodes,
            "temperature": config.temperature, "response_length": config.response_length,
            "epochs": config.num_ppo_epochs, "seed": config.seed, "algorithm": ALGORITHM_NAMES[algorithm],
            "prompts": prompts, "gold_proxy": gold_proxy, "kl_trend": guards.kl_trend(),
            "warnings": guards.card_list(), "samples": sample_rows(*zip(*samples[:8]))}
