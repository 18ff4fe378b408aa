"""What the evaluation measures on: held-out text, and prompts with their human replies and next-reply ranking
contexts, a seeded sample spread over all held-out conversations."""

from dataclasses import dataclass

from datasets import Dataset

from minichatgpt.data.splits import load_dialogs, sample_pairs, split_eval, text_splits
from minichatgpt.evaluation.relevance import ranking_rows
from minichatgpt.training.defaults import trainer_defaults


@dataclass
class HeldOut:
    texts: list[str]
    dialogs: tuple[Dataset, Dataset]
    prompts: list[list[dict]]
    human_replies: list[str]
    ranking: list[dict]
    summary: dict


def held_out(recipe, data_args, args) -> HeldOut:
    """The held-out items of the run's data split: the text no stage trained on, the dialog split, `max_prompts`
    prompts of the RL stage's context length with the human reply to each, and `ranking_contexts` contexts for
    next-reply ranking."""
    dialogs = load_dialogs(data_args)
    texts = list(text_splits(data_args, dialogs=dialogs)[1]["text"])
    dialog_split = split_eval(dialogs, data_args)
    held_out_dialogs = dialog_split[1]["messages"]
    ppo_args, _ = recipe.parse("ppo", defaults=trainer_defaults())
    sampled = sample_pairs(held_out_dialogs, ppo_args.context_turns, args.max_prompts, data_args.split_seed)
    rows = ranking_rows(held_out_dialogs, ppo_args.context_turns, max_contexts=args.ranking_contexts,
                        seed=data_args.split_seed)
    summary = {"text_documents": len(texts), "conversations": len(held_out_dialogs), "prompts": len(sampled),
               "prompt_conversations": len({i for i, _, _ in sampled}), "ranking_contexts": len(rows)}
    return HeldOut(texts, dialog_split, [history for _, history, _ in sampled], [reply for _, _, reply in sampled],
                   rows, summary)
