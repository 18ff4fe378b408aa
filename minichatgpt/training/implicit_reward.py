"""DPO's implicit reward on held-out preference pairs: how often it ranks the chosen reply first, beside the SFT
model's likelihood alone."""

from collections import defaultdict

from minichatgpt.generation import reply_log_likelihoods


def reply_log_probs(model, tokenizer, prompts, replies) -> list[float]:
    """log p(reply | prompt) of each pair, both as message lists, rendered as the chat template writes them."""
    prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=False) for p in prompts]
    reply_ids = [tokenizer.apply_chat_template(p + r, return_dict=False)[len(ids):]
                 for p, r, ids in zip(prompts, replies, prompt_ids)]
    return reply_log_likelihoods(model, prompt_ids, reply_ids)


def preference_report(policy, reference, tokenizer, pairs, beta: float) -> dict:
    """On held-out pairs, overall and per rejected kind: how often DPO's implicit reward,
    beta * log(p_policy / p_reference) of a reply, puts chosen above rejected, its mean margin, and how often the
    reference model (SFT) alone finds chosen the likelier reply."""
    logps = {(name, side): reply_log_probs(model, tokenizer, pairs["prompt"], pairs[side])
             for name, model in (("policy", policy), ("reference", reference)) for side in ("chosen", "rejected")}
    by_kind = defaultdict(list)
    for i, kind in enumerate(pairs["kind"]):
        implicit = {side: beta * (logps["policy", side][i] - logps["reference", side][i])
                    for side in ("chosen", "rejected")}
        row = (implicit["chosen"] - implicit["rejected"], logps["reference", "chosen"][i] - logps["reference", "rejected"][i])
        by_kind["all"].append(row)
        by_kind[kind].append(row)
    return {
        kind: {"accuracy": round(sum(m > 0 for m, _ in rows) / len(rows), 4),
               "margin": round(sum(m for m, _ in rows) / len(rows), 4),
               "sft_accuracy": round(sum(s > 0 for _, s in rows) / len(rows), 4), "pairs": len(rows)}
        for kind, rows in sorted(by_kind.items())
    }


def accuracy_rows(report: dict) -> str:
    """The card's rows per rejected kind: the SFT model's likelihood accuracy, DPO's accuracy and mean margin."""
    return "\n".join(f"| {kind} | {row['pairs']} | {row['sft_accuracy']:.3f} | {row['accuracy']:.3f} | "
                     f"{row['margin']:.3f} |" for kind, row in report.items())
