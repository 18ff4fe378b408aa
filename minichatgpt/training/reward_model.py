"""The reward model's training set and what its card reports: accuracy on pairs, agreement with the labeler."""

from collections import defaultdict

from minichatgpt.generation import score_pairs


def pairwise_report(model, tokenizer, pairs) -> dict:
    """Accuracy (chosen scored above rejected) and mean margin, overall and per rejected kind."""
    chosen, rejected = score_pairs(model, tokenizer, pairs)
    by_kind = defaultdict(list)
    for kind, c, r in zip(pairs["kind"], chosen, rejected):
        by_kind["all"].append(c - r)
        by_kind[kind].append(c - r)
    return {
        kind: {"accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
               "margin": round(sum(margins) / len(margins), 4), "pairs": len(margins)}
        for kind, margins in sorted(by_kind.items())
    }


def with_lengths(pairs):
    """Adds the `length` column (characters of the longer conversation) by which the group_by_length sampler batches
    pairs of similar length: random batches of quickstart pairs are two thirds padding."""
    return pairs.map(lambda pair: {"length": max(len(str(pair["prompt"] + pair["chosen"])),
                                                 len(str(pair["prompt"] + pair["rejected"])))})


def agreement_table(before: dict, after: dict) -> str:
    """The card's section on how the reward model agrees with the labeler on held-out comparisons."""
    def cell(row):
        return f"{row['accuracy']:.3f} ± {row['accuracy_se']:.3f}" if row["accuracy"] is not None else "-"

    lines = [f"| pairwise accuracy, {name.replace('_', ' ')} | {after[name]['pairs']} | {cell(before[name])} | "
             f"{cell(after[name])} |" for name in ("all", "smaller_margin", "larger_margin")]
    spearman = {k: row["spearman"] for k, row in (("before", before), ("after", after))}
    lines.append(f"| rank correlation with the labeler within a prompt (Spearman) | {spearman['after']['prompts']} "
                 f"prompts | {spearman['before']['mean']:.3f} ± {spearman['before']['se']:.3f} | "
                 f"{spearman['after']['mean']:.3f} ± {spearman['after']['se']:.3f} |")
    return ("\n## Agreement with the labeler on held-out comparisons of the SFT model's replies\n\n"
            "| measure | items | before training | after training |\n|---|---|---|---|\n" + "\n".join(lines) + "\n")


def accuracy_rows(before: dict, after: dict) -> str:
    """The card's rows of held-out accuracy per rejected kind, before and after training."""
    return "\n".join(f"| {kind} | {after[kind]['pairs']} | {before[kind]['accuracy']:.3f} | "
                     f"{after[kind]['accuracy']:.3f} | {after[kind]['margin']:.3f} |" for kind in after)
