"""Evaluate a run's models on the held-out splits; writes report.json, report.md and plots.

    python eval/run.py --config recipes/smoke.yaml [--max_prompts 32]

The report goes to {output_root}/{run_name}/eval/; the numbers also go into each model card's `model-index`.
"""

import json
import logging
import os
from pathlib import Path

import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

from eval.metrics import load_metric
from eval.relevance import next_reply_recall, ranking_rows, reply_specificity
from pipeline.chat import decoding_config, reply
from pipeline.common import (
    fit_history,
    generate_replies,
    load_model,
    load_tokenizer,
    plot_curves,
    run_stage,
    score_conversations,
    trainer_defaults,
)
from pipeline.data import load_dialogs, load_text, prompt_reply_pairs, split_eval
from pipeline.hub import library_versions, read_metadata
from pipeline.preferences import preference_splits

logger = logging.getLogger("minichatgpt.eval")


def text_perplexity(model_dir, texts) -> float:
    return load_metric("perplexity").compute(predictions=texts, model_id=str(model_dir))["perplexity"]


def reply_perplexity(model_dir, tokenizer, pairs) -> float:
    contexts = [tokenizer.apply_chat_template(h, add_generation_prompt=True, tokenize=False) for h, _ in pairs]
    replies = [f"{reply}<|end|>" for _, reply in pairs]
    return load_metric("perplexity").compute(predictions=replies, contexts=contexts,
                                             model_id=str(model_dir))["perplexity"]


def reply_stats(replies: list[str]) -> dict:
    return {
        "distinct_2": load_metric("distinct_n").compute(predictions=replies)["distinct_2"],
        "repeated_3gram_rate": load_metric("repeated_ngrams").compute(predictions=replies, n=3)["repeated_ngram_rate"],
        "mean_words": sum(len(r.split()) for r in replies) / max(len(replies), 1),
    }


def chat_replies(model, tokenizer, prompts, strategy: str, max_prompt_tokens: int, max_new_tokens: int) -> list[str]:
    """Replies one prompt at a time through the chat's own decoding, from the model's generation_config defaults."""
    config = decoding_config(model.generation_config, strategy, max_new_tokens=max_new_tokens)
    return [reply(model, tokenizer, fit_history(tokenizer, p, max_prompt_tokens)[0], config) for p in prompts]


def update_model_card(folder: Path, metrics: dict):
    """Add the evaluation numbers to the card's `model-index` (written to a temporary file, then moved)."""
    card = folder / "README.md"
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    results = meta.setdefault("model-index", [{"name": "minichatgpt", "results": []}])[0]["results"]
    results[:] = [r for r in results if r.get("dataset", {}).get("name") != "held-out evaluation"]
    results.append({"task": {"type": meta.get("pipeline_tag", "text-generation")},
                    "dataset": {"name": "held-out evaluation", "type": "minichatgpt"},
                    "metrics": [{"type": k, "value": round(v, 4)} for k, v in metrics.items()]})
    tmp = card.with_suffix(".tmp")
    tmp.write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n{body}", encoding="utf-8")
    os.replace(tmp, card)


def plot_reward_accuracy(per_kind: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in per_kind.get("after", {}) if k != "all"] + ["all"]
    if not per_kind.get("after"):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.4
    for offset, when in ((-width / 2, "before"), (width / 2, "after")):
        ax.bar([i + offset for i in range(len(kinds))], [per_kind[when][k]["accuracy"] for k in kinds], width,
               label=f"{when} training")
    ax.set_xticks(range(len(kinds)), kinds, rotation=20)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_title("reward model: held-out pairwise accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(recipe, overrides):
    data_args, args = recipe.parse_stage("eval", overrides)
    out = Path(recipe.output_dir("eval"))
    out.mkdir(parents=True, exist_ok=True)
    paths = {stage: recipe.hub_path(stage) for stage in ("pretrain", "sft", "reward", "ppo")}
    report = {"run": recipe.run_name, "recipe": str(recipe.path), "models": {k: str(v) for k, v in paths.items()},
              "library_versions": library_versions(),
              "rl_algorithm": read_metadata(paths["ppo"]).get("algorithm", "ppo")}

    _, held_out_text = split_eval(load_text(data_args), data_args)
    texts = list(held_out_text["text"])[: args.max_prompts]
    dialog_split = split_eval(load_dialogs(data_args), data_args)
    held_out_dialogs = dialog_split[1]
    ppo_args, _ = recipe.parse("ppo", defaults=trainer_defaults())
    reward_args, reward_config = recipe.parse("reward", defaults=trainer_defaults())
    pairs = prompt_reply_pairs(held_out_dialogs["messages"], ppo_args.context_turns)[: args.max_prompts]
    prompts = [history for history, _ in pairs]
    tokenizer = load_tokenizer(paths["sft"], "SFT model's tokenizer")

    report["perplexity"] = {
        stage: {"held_out_text": text_perplexity(paths[stage], texts),
                "held_out_replies": reply_perplexity(paths[stage], tokenizer, pairs)}
        for stage in ("pretrain", "sft")
    }
    reward_model = load_model(paths["reward"], AutoModelForSequenceClassification, "reward model", num_labels=1)
    _, eval_pairs, _ = preference_splits(data_args, reward_args.rejected_kinds, reward_args.rejected_weights,
                                         reward_args.context_turns, reward_config.seed, reward_args.max_pairs,
                                         reward_args.eval_pairs, dialogs=dialog_split)
    chosen = score_conversations(reward_model, tokenizer, [p + c for p, c in zip(eval_pairs["prompt"],
                                                                                 eval_pairs["chosen"])])
    rejected = score_conversations(reward_model, tokenizer, [p + r for p, r in zip(eval_pairs["prompt"],
                                                                                   eval_pairs["rejected"])])
    report["reward_model"] = load_metric("pairwise_accuracy").compute(predictions=chosen, references=rejected)

    context = AutoConfig.from_pretrained(paths["sft"]).max_position_embeddings
    budget = context - args.max_new_tokens
    strategies = {
        "greedy": {"do_sample": False, "repetition_penalty": 1.0},
        "beam": {"do_sample": False, "num_beams": args.num_beams, "repetition_penalty": args.repetition_penalty},
    }
    # The chat's default (sampling from generation_config.json) and MMI reranking, decoded as chat.py decodes.
    chat_strategies = ("sample", "mmi")
    replies, policies = {}, {}
    for stage in ("sft", "ppo"):
        model = load_model(paths[stage], AutoModelForCausalLM, f"{stage} model", tokenizer=tokenizer)
        for strategy, settings in strategies.items():
            replies[(stage, strategy)] = generate_replies(
                model, tokenizer, prompts, max_prompt_tokens=budget, max_new_tokens=args.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings)
        for strategy in chat_strategies:
            set_seed(args.seed)
            replies[(stage, strategy)] = chat_replies(model, tokenizer, prompts, strategy, budget,
                                                      args.max_new_tokens)
    human_replies = [r for _, r in pairs]
    for strategy in (*strategies, *chat_strategies):
        scores = {stage: score_conversations(reward_model, tokenizer, [
            p + [{"role": "assistant", "content": r}] for p, r in zip(prompts, replies[(stage, strategy)])])
            for stage in ("sft", "ppo")}
        wins = load_metric("win_rate").compute(predictions=scores["ppo"], references=scores["sft"])
        policies[strategy] = {
            "ppo_win_rate": wins["win_rate"],
            **{f"{stage}_{k}": v for stage in ("sft", "ppo") for k, v in
               {"mean_reward": wins["mean_score_a" if stage == "ppo" else "mean_score_b"],
                **reply_stats(replies[(stage, strategy)]),
                **relevance_stats(prompts, replies[(stage, strategy)], human_replies)}.items()},
        }
    report["sft_vs_ppo"] = policies
    rows = ranking_rows(held_out_dialogs["messages"], ppo_args.context_turns, max_contexts=args.ranking_contexts,
                        seed=data_args.split_seed)
    report["next_reply_ranking"] = {stage: next_reply_recall(paths[stage], tokenizer, rows)
                                    for stage in ("pretrain", "sft", "ppo")}
    report["samples"] = [
        {"prompt": p[-1]["content"], **{f"{stage}_{strategy}": replies[(stage, strategy)][i]
                                        for stage in ("sft", "ppo") for strategy in (*strategies, *chat_strategies)}}
        for i, p in enumerate(prompts[:8])
    ]
    report["plots"] = write_plots(paths, out)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")

    ranking = report["next_reply_ranking"]
    update_model_card(paths["pretrain"], {**{f"{k}_perplexity": v for k, v in report["perplexity"]["pretrain"].items()},
                                          "next_reply_recall_at_1": ranking["pretrain"]["recall_at_1"]})
    update_model_card(paths["sft"], {**{f"{k}_perplexity": v for k, v in report["perplexity"]["sft"].items()},
                                     "next_reply_recall_at_1": ranking["sft"]["recall_at_1"]})
    update_model_card(paths["reward"], {"pairwise_accuracy": report["reward_model"]["accuracy"]})
    update_model_card(paths["ppo"], {**{f"{s}_{k}": v for s, row in policies.items() for k, v in row.items()
                                        if k.startswith("ppo_")},
                                     "next_reply_recall_at_1": ranking["ppo"]["recall_at_1"]})
    print(f"report: {out / 'report.md'}")
    print(f"SFT vs base reply perplexity: {report['perplexity']['sft']['held_out_replies']:.1f} vs "
          f"{report['perplexity']['pretrain']['held_out_replies']:.1f}; reward accuracy "
          f"{report['reward_model']['accuracy']:.3f}; PPO win rate (greedy) {policies['greedy']['ppo_win_rate']:.2f}; "
          f"next-reply recall@1 SFT {ranking['sft']['recall_at_1']:.2f}; specificity of the chat default (sample) "
          f"SFT {policies['sample']['sft_specificity']:.2f}, PPO {policies['sample']['ppo_specificity']:.2f}")


def relevance_stats(prompts, replies: list[str], human_replies: list[str]) -> dict:
    result = reply_specificity(prompts, replies, human_replies)
    return {"specificity": result["specificity"], "echo_rate": result["echo_rate"]}


def write_plots(paths: dict, out: Path) -> list[str]:
    written = []
    for stage, title in (("pretrain", "pretraining"), ("sft", "SFT")):
        history = read_metadata(paths[stage]).get("log_history", [])
        if plot_curves(history, {"loss": "train loss", "eval_loss": "eval loss"}, out / f"{stage}_loss.png", title):
            written.append(f"{stage}_loss.png")
    if plot_reward_accuracy(read_metadata(paths["reward"]).get("per_kind", {}), out / "reward_accuracy.png"):
        written.append("reward_accuracy.png")
    history = read_metadata(paths["ppo"]).get("log_history", [])
    if plot_curves(history, {"objective/scores": "reward-model score", "objective/kl": "KL to SFT"},
                   out / "ppo_reward_kl.png", "PPO"):
        written.append("ppo_reward_kl.png")
    return written


def render_markdown(report: dict) -> str:
    ppl = report["perplexity"]
    rl = report["rl_algorithm"].upper()
    lines = [
        f"# Evaluation of the run `{report['run']}`",
        "",
        f"Recipe `{report['recipe']}`. Held-out splits only.",
        "",
        "## Perplexity",
        "",
        "| model | held-out text | held-out dialog replies |",
        "|---|---|---|",
        *[f"| {stage} | {row['held_out_text']:.1f} | {row['held_out_replies']:.1f} |" for stage, row in ppl.items()],
        "",
        "## Reward model",
        "",
        f"Pairwise accuracy {report['reward_model']['accuracy']:.3f}, mean margin "
        f"{report['reward_model']['mean_margin']:.3f} on held-out automatic pairs.",
        "",
        "## Next-reply ranking (relevance under each model's own likelihood)",
        "",
        "Recall@1 of 10: how often the real reply scores highest among it and 9 replies of similar length from "
        "other conversations (chance 0.10), by log p(reply | context) and by PMI.",
        "",
        "| model | recall@1 | recall@1 (PMI) | mean rank |",
        "|---|---|---|---|",
        *[f"| {stage} | {row['recall_at_1']:.3f} | {row['recall_at_1_pmi']:.3f} | {row['mean_rank']:.2f} |"
          for stage, row in report["next_reply_ranking"].items()],
        "",
        f"## SFT vs the RL model ({rl}, `-ppo`) on held-out prompts",
        "",
        "Mean reward and win rate are the reward model's judgement; specificity (human replies = 1, a constant reply "
        "= 0) and echo rate come from an independent sentence-embedding model. `sample` is the chat's default "
        "decoding (generation_config.json); `mmi` reranks sampled candidates by mutual information.",
        "",
        "| decoding | policy | mean reward | RL win rate | specificity | echo rate | distinct-2 | repeated 3-gram rate "
        "| mean words |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy, row in report["sft_vs_ppo"].items():
        for stage in ("sft", "ppo"):
            win = f"{row['ppo_win_rate']:.2f}" if stage == "ppo" else ""
            lines.append(f"| {strategy} | {stage} | {row[f'{stage}_mean_reward']:.3f} | {win} | "
                         f"{row[f'{stage}_specificity']:.3f} | {row[f'{stage}_echo_rate']:.3f} | "
                         f"{row[f'{stage}_distinct_2']:.3f} | {row[f'{stage}_repeated_3gram_rate']:.3f} | "
                         f"{row[f'{stage}_mean_words']:.1f} |")
    lines += ["", "## Sample replies", "",
              f"| prompt | SFT greedy | {rl} greedy | SFT beam | {rl} beam | SFT mmi | {rl} mmi |",
              "|---|---|---|---|---|---|---|"]
    for s in report["samples"]:
        cells = [s["prompt"], s["sft_greedy"], s["ppo_greedy"], s["sft_beam"], s["ppo_beam"], s["sft_mmi"],
                 s["ppo_mmi"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(main, __doc__)
