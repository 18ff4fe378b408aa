"""The evaluation report as Markdown, and its plots: the judges the training never saw first, the reward model's
verdict after them, every number with its standard error; and the report's numbers in each model card."""

from pathlib import Path

from minichatgpt.evaluation.policies import POLICIES, card_metrics
from minichatgpt.hub import add_evaluation, read_metadata
from minichatgpt.training.gold_proxy import plot_gold_proxy
from minichatgpt.training.logs import plot_curves


def pm(row: dict, key: str, digits: int = 3) -> str:
    """`value ± standard error` of row[key] (its standard error under key + '_se')."""
    return f"{row[key]:.{digits}f} ± {row[key + '_se']:.{digits}f}"


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


def write_plots(paths: dict, out: Path) -> list[str]:
    written = []
    for stage, title in (("pretrain", "pretraining"), ("sft", "SFT")):
        history = read_metadata(paths[stage]).get("log_history", [])
        if plot_curves(history, {"loss": "train loss", "eval_loss": "eval loss"}, out / f"{stage}_loss.png", title):
            written.append(f"{stage}_loss.png")
    if plot_reward_accuracy(read_metadata(paths["reward"]).get("per_kind", {}), out / "reward_accuracy.png"):
        written.append("reward_accuracy.png")
    rl = read_metadata(paths["ppo"])
    name = rl.get("algorithm", "ppo").upper()
    if plot_curves(rl.get("log_history", []), {"objective/scores": "composite reward", "objective/kl": "KL to SFT"},
                   out / "rl_reward_kl.png", name):
        written.append("rl_reward_kl.png")
    if rl.get("gold_proxy") and plot_gold_proxy(rl["gold_proxy"], out / "gold_proxy.png", f"{name}: gold vs proxy"):
        written.append("gold_proxy.png")
    return written


def labeler_section(report: dict) -> list[str]:
    """The report's first table: the labeler's win rate of each policy over SFT."""
    if "labeler" not in report:
        return []
    names = {"ppo": report["rl_algorithm"].upper(), "dpo": "DPO"}
    rows = [f"| {strategy} | {name} | {pm(row, 'gold_win_rate', 2)} | {pm(row['sft'], 'gold')} | "
            f"{pm(row[policy], 'gold')} |"
            for policy, name in names.items() if f"sft_vs_{policy}" in report
            for strategy, row in report[f"sft_vs_{policy}"].items()]
    return [
        "## The labeler's verdict",
        "",
        f"The labeler `{report['labeler']}` ranked the SFT model's replies, and the reward model learned its rankings; "
        "here it judges the replies of the RL model (labelled with its algorithm) and of DPO to the held-out prompts "
        "against SFT's: the win rate counts a tie as half. It is the gold judge the RL stage optimised through its "
        "proxy, so the independent judge below checks it.",
        "",
        "| decoding | policy | labeler's win rate over SFT | SFT mean score | policy mean score |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def agreement_lines(agreement: dict | None) -> list[str]:
    if not agreement:
        return []
    return [
        "Agreement with the labeler on held-out comparisons of the SFT model's replies (pairs split at the median "
        "labeler margin; the rank correlation is within each prompt's replies, averaged over prompts):",
        "",
        "| measure | items | value |",
        "|---|---|---|",
        *[f"| accuracy, {name.replace('_', ' ')} pairs | {agreement[name]['pairs']} | "
          f"{agreement[name]['accuracy']:.3f} ± {agreement[name]['accuracy_se']:.3f} |"
          for name in ("all", "smaller_margin", "larger_margin")],
        f"| Spearman with the labeler within a prompt | {agreement['spearman']['prompts']} | "
        f"{agreement['spearman']['mean']:.3f} ± {agreement['spearman']['se']:.3f} |",
        "",
    ]


def seed_example_lines(example: dict) -> list[str]:
    return [
        "## The seed's example",
        "",
        f"\"{example['prompt']}\", greedy and by beam search (5 beams, repetition penalty 1.2):",
        "",
        "| model | greedy | beam search |",
        "|---|---|---|",
        *[f"| {stage} | {row['greedy']} | {row['beam']} |" for stage, row in example["replies"].items()],
        "",
    ]


def render_markdown(report: dict) -> str:
    held, rl = report["held_out"], report["rl_algorithm"].upper()
    policies, ppl, reward = report["sft_vs_ppo"], report["perplexity"], report["reward_model"]
    lines = [
        f"# Evaluation of the run `{report['run']}`",
        "",
        f"Recipe `{report['recipe']}`. Held-out data only: {held['conversations']} conversations and "
        f"{held['text_documents']} text documents that no stage trained on (chosen by content id, the same in every "
        f"stage). {held['prompts']} prompts sampled over {held['prompt_conversations']} of those conversations; "
        "every number is given ± its standard error over the prompts (pairs, contexts or texts).",
        "",
        *labeler_section(report),
        "## Relevance, judged independently of the training",
        "",
        "Reply specificity (an independent sentence-embedding model: how much better a reply fits its own prompt "
        "than the other prompts; human replies = 1, a constant reply = 0) and echo rate (replies that mostly copy the "
        f"prompt). The gain is {rl} minus SFT on the same prompts (paired). `sample` is the chat's default decoding "
        "(generation_config.json)" + ("; `mmi` reranks sampled candidates by mutual information." if "mmi" in policies
                                      else "."),
        "",
        f"| decoding | SFT specificity | {rl} specificity | gain | SFT echo rate | {rl} echo rate |",
        "|---|---|---|---|---|---|",
        *[f"| {s} | {pm(row['sft'], 'specificity')} | {pm(row['ppo'], 'specificity')} | "
          f"{row['specificity_gain']:+.3f} ± {row['specificity_gain_se']:.3f} | {pm(row['sft'], 'echo_rate')} | "
          f"{pm(row['ppo'], 'echo_rate')} |" for s, row in policies.items()],
        "",
        f"Next-reply ranking on {held['ranking_contexts']} held-out contexts: how often a model's likelihood ranks "
        "the real reply first among it and 9 replies of similar length from other conversations (chance 0.10), by "
        "log p(reply | context) and by PMI.",
        "",
        "| model | recall@1 | recall@1 (PMI) | mean rank |",
        "|---|---|---|---|",
        *[f"| {stage} | {pm(row, 'recall_at_1')} | {pm(row, 'recall_at_1_pmi')} | {row['mean_rank']:.2f} |"
          for stage, row in report["next_reply_ranking"].items()],
        "",
        "## Reply form",
        "",
        "| decoding | policy | distinct-2 | repeated 3-gram rate | mean words |",
        "|---|---|---|---|---|",
    ]
    for strategy, row in policies.items():
        for stage in ("sft", "ppo"):
            lines.append(f"| {strategy} | {stage} | {pm(row[stage], 'distinct_2')} | "
                         f"{pm(row[stage], 'repeated_3gram_rate')} | {pm(row[stage], 'mean_words', 1)} |")
    lines += [
        "",
        "## The reward model's verdict (in-distribution)",
        "",
        f"The RL stage maximised this reward model's score, so its verdict on the {rl} model is in-distribution: "
        "a win here need not be a better reply. Each reply is scored as generated (one cut off by the length limit "
        "has no end of turn).",
        "",
        f"| decoding | SFT mean reward | {rl} mean reward | {rl} win rate |",
        "|---|---|---|---|",
        *[f"| {s} | {pm(row['sft'], 'mean_reward')} | {pm(row['ppo'], 'mean_reward')} | {pm(row, 'win_rate', 2)} |"
          for s, row in policies.items()],
    ]
    if "sft_vs_dpo" in report:
        lines += [
            "",
            "## DPO vs SFT",
            "",
            "The DPO model (`pipeline/dpo.py`: trained on the reward stage's preference pairs, no reward model, no "
            "sampling) against SFT on the same prompts and decodings: the independent judges, its form, and the "
            "reward model's verdict, which DPO never trained on.",
            "",
            "| decoding | SFT specificity | DPO specificity | gain | DPO echo rate | DPO distinct-2 | DPO mean words "
            "| DPO win rate |",
            "|---|---|---|---|---|---|---|---|",
            *[f"| {s} | {pm(row['sft'], 'specificity')} | {pm(row['dpo'], 'specificity')} | "
              f"{row['specificity_gain']:+.3f} ± {row['specificity_gain_se']:.3f} | {pm(row['dpo'], 'echo_rate')} | "
              f"{pm(row['dpo'], 'distinct_2')} | {pm(row['dpo'], 'mean_words', 1)} | {pm(row, 'win_rate', 2)} |"
              for s, row in report["sft_vs_dpo"].items()],
        ]
    lines += [
        "",
        "## Perplexity",
        "",
        "| model | held-out text | held-out dialog replies |",
        "|---|---|---|",
        *[f"| {stage} | {row['held_out_text']['perplexity']:.1f} ± {row['held_out_text']['se']:.1f} "
          f"({row['held_out_text']['texts']} texts) | {row['held_out_replies']['perplexity']:.1f} ± "
          f"{row['held_out_replies']['se']:.1f} ({row['held_out_replies']['texts']} replies) |"
          for stage, row in ppl.items()],
        "",
        "## Reward model",
        "",
        f"Pairwise accuracy on {reward['pairs']} held-out pairs made as its training pairs were, from held-out "
        f"prompts: {pm(reward, 'accuracy')} (mean margin {reward['mean_margin']:.3f}).",
        "",
        "| pairs of | pairs | accuracy |",
        "|---|---|---|",
        *[f"| {kind} | {row['pairs']} | {pm(row, 'accuracy')} |" for kind, row in reward["per_kind"].items()],
        "",
        *agreement_lines(reward.get("agreement")),
        *seed_example_lines(report["seed_example"]),
        "## Sample replies",
        "",
        "| prompt | " + " | ".join(f"{name} {strategy}" for strategy in policies for name in ("SFT", rl)) + " |",
        "|---" * (1 + 2 * len(policies)) + "|",
    ]
    for s in report["samples"]:
        cells = [s["prompt"], *(s[stage][strategy] for strategy in policies for stage in ("sft", "ppo"))]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def update_model_cards(recipe, report: dict):
    """The evaluation's numbers in each model card's `model-index`, as a new revision of the model."""
    ranking, perplexity = report["next_reply_ranking"], report["perplexity"]
    cards = {
        "pretrain": {**{f"{k}_perplexity": v["perplexity"] for k, v in perplexity["pretrain"].items()},
                     "next_reply_recall_at_1": ranking["pretrain"]["recall_at_1"]},
        "sft": {**{f"{k}_perplexity": v["perplexity"] for k, v in perplexity["sft"].items()},
                "next_reply_recall_at_1": ranking["sft"]["recall_at_1"]},
        "reward": {"pairwise_accuracy": report["reward_model"]["accuracy"]},
        **{policy: {**{f"{s}_{k}": v for s, row in report[f"sft_vs_{policy}"].items()
                       for k, v in card_metrics(row, policy).items()
                       if k.startswith(f"{policy}_") and not k.endswith("_se")},
                    "next_reply_recall_at_1": ranking[policy]["recall_at_1"]}
           for policy in POLICIES if f"sft_vs_{policy}" in report},
    }
    for stage, metrics in cards.items():
        add_evaluation(recipe.run.hub_dir, recipe.hub_name(stage), metrics, keep_revisions=recipe.run.keep_revisions)


def summary_lines(report: dict) -> list[str]:
    """The evaluation's closing lines: perplexity, reward accuracy, recall and the chat default's specificity."""
    rl, ranking, perplexities = report["sft_vs_ppo"], report["next_reply_ranking"], report["perplexity"]
    lines = [f"SFT vs base reply perplexity: {perplexities['sft']['held_out_replies']['perplexity']:.1f} vs "
             f"{perplexities['pretrain']['held_out_replies']['perplexity']:.1f}; reward accuracy "
             f"{report['reward_model']['accuracy']:.3f}; next-reply recall@1 SFT {ranking['sft']['recall_at_1']:.2f}; "
             f"specificity of the chat default (sample) SFT {rl['sample']['sft']['specificity']:.3f}, RL "
             f"{rl['sample']['ppo']['specificity']:.3f} (gain {rl['sample']['specificity_gain']:+.3f} ± "
             f"{rl['sample']['specificity_gain_se']:.3f}, {report['held_out']['prompts']} prompts)"]
    if "sft_vs_dpo" in report:
        dpo = report["sft_vs_dpo"]["sample"]
        lines.append(f"DPO: specificity {dpo['dpo']['specificity']:.3f} (gain {dpo['specificity_gain']:+.3f} ± "
                     f"{dpo['specificity_gain_se']:.3f}), reward-model win rate over SFT {dpo['win_rate']:.2f}")
    return lines
