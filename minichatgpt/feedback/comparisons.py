"""Comparisons of the SFT model's own replies (InstructGPT's step 2): for each prompt, K replies sampled at the chat's
decoding, each scored by the labeler; every pair of one prompt whose scores differ by at least the tie margin is a
preference row (chosen, rejected, margin) for the reward model.

They are kept as JSON Lines under the run folder, one prompt a line, so that a person can read them and label them
again on the web app's labeling page (pipeline/app.py --label):

    {"id", "prompt": [messages], "replies": [K strings], "scores": [K numbers], "finished": [K booleans],
     "labeler", "model", "revision"}

Training prompts and held-out prompts (the data's content-id split) get a file each; the held-out one only measures.
"""

import copy
import hashlib
import itertools
import json
import os
import statistics
import time
from pathlib import Path

from datasets import Dataset

from minichatgpt.data.sources import conversation_text
from minichatgpt.data.splits import content_id, sample_pairs
from minichatgpt.errors import PipelineError
from minichatgpt.generation import ended, generate_reply_ids, reply_texts

SETTINGS_FILE = "settings.json"
SPLITS = ("train", "held_out")


def model_revision(folder) -> str:
    """The hub revision a model folder resolves to (`.revisions/<name>/<stamp>`), or the folder's own name."""
    return Path(os.path.realpath(folder)).name


def weights_digest(folder) -> str:
    """What identifies a model's replies: its weights (the evaluation's card edits make new revisions of the same
    weights)."""
    digest = hashlib.sha256()
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as weights:
            for block in iter(lambda: weights.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def comparison_prompts(conversations, context_turns: int, limit: int, seed: int) -> list[list[dict]]:
    return [history for _, history, _ in sample_pairs(conversations, context_turns, limit, seed)]


def sample_comparisons(model, tokenizer, prompts: list[list[dict]], replies_per_prompt: int, generation_config,
                       max_prompt_tokens: int, labeler, model_name: str) -> list[dict]:
    """K replies per prompt from the model's own decoding settings, each scored by the labeler."""
    repeated = [p for p in prompts for _ in range(replies_per_prompt)]
    _, reply_ids = generate_reply_ids(model, tokenizer, repeated, batch_size=64, max_prompt_tokens=max_prompt_tokens,
                                      generation_config=generation_config)
    finished = ended(tokenizer, reply_ids)
    texts = reply_texts(tokenizer, reply_ids)
    scores = labeler.score(repeated, texts, finished)
    revision = model_revision(model.name_or_path)
    rows = []
    for i, prompt in enumerate(prompts):
        group = slice(i * replies_per_prompt, (i + 1) * replies_per_prompt)
        # Unique within the file and across collections: the labeling page finds a prompt's judgement by it.
        rows.append({"id": content_id(f"{revision}:{i}:{conversation_text(prompt)}"), "prompt": prompt,
                     "replies": texts[group], "scores": [round(s, 4) for s in scores[group]],
                     "finished": finished[group], "labeler": labeler.name, "model": str(model_name),
                     "revision": revision})
    return rows


def collect_comparisons(recipe, data_args, stage_args, seed: int, dialogs) -> str:
    """The labeler's comparisons of the SFT model's replies, collected into the run folder unless they are there
    already from the same weights and settings; returns what was done."""
    from transformers import AutoModelForCausalLM, set_seed

    from minichatgpt.feedback.labeler import load_labeler, reference_conversations
    from minichatgpt.model.loading import load_model, load_tokenizer, revision_folder
    from minichatgpt.training.defaults import trainer_defaults

    folder, sft_path = Path(recipe.output_dir("comparisons")), recipe.hub_path("sft")
    # One revision for the digest, the tokenizer and the weights, whatever is pushed meanwhile.
    sft_files = revision_folder(sft_path)
    ppo_config = recipe.parse("ppo", defaults=trainer_defaults(response_length=32))[1]
    turns = recipe.reward_context_turns(stage_args)
    settings = {"model": str(sft_path), "weights": weights_digest(sft_files), "labeler": stage_args.labeler,
                "replies_per_prompt": stage_args.replies_per_prompt, "prompts": stage_args.comparison_prompts,
                "held_out_prompts": stage_args.held_out_comparison_prompts, "context_turns": turns,
                "max_new_tokens": ppo_config.response_length, "seed": seed,
                "data": json.loads(json.dumps(vars(data_args), default=str))}
    if collected(folder, settings):
        return f"comparisons reused from {folder}"
    start = time.time()
    tokenizer = load_tokenizer(sft_files, "SFT model's tokenizer")
    tokenizer.padding_side = "left"
    policy = load_model(sft_files, AutoModelForCausalLM, "SFT model", tokenizer=tokenizer)
    config = copy.deepcopy(policy.generation_config)
    config.max_new_tokens = ppo_config.response_length
    labeler = load_labeler(stage_args.labeler, reference_conversations(dialogs[0]["messages"], turns,
                                                                       data_args.split_seed))
    max_prompt_tokens = policy.config.max_position_embeddings - ppo_config.response_length
    splits = {}
    for split, conversations, limit in (("train", dialogs[0], stage_args.comparison_prompts),
                                        ("held_out", dialogs[1], stage_args.held_out_comparison_prompts)):
        set_seed(seed)
        prompts = comparison_prompts(conversations["messages"], turns, limit, data_args.split_seed)
        splits[split] = sample_comparisons(policy, tokenizer, prompts, stage_args.replies_per_prompt, config,
                                           max_prompt_tokens, labeler, sft_path)
    save_comparisons(folder, settings, splits)
    return (f"comparisons collected in {time.time() - start:.0f}s: {stage_args.replies_per_prompt} replies to each of "
            f"{len(splits['train'])} training and {len(splits['held_out'])} held-out prompts, labelled by "
            f"{stage_args.labeler}, in {folder}")


def write_rows(path: Path, rows: list[dict]):
    """The rows as JSON Lines, written under a temporary name and renamed: never a half-written file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(partial, path)


def comparison_problem(row) -> str | None:
    """What keeps `row` from being a comparison to label, or None."""
    if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not row["id"]:
        return "expected an object with an 'id' string"
    prompt, replies = row.get("prompt"), row.get("replies")
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str) for message in prompt):
        return "expected 'prompt' to be a list of messages ({'role': ..., 'content': ...})"
    if not isinstance(replies, list) or len(replies) < 2 or not all(isinstance(text, str) for text in replies):
        return "expected 'replies' to be a list of two or more strings"
    if "scores" in row and not (isinstance(row["scores"], list) and len(row["scores"]) == len(replies)):
        return f"expected 'scores' to be a list of one score per reply ({len(replies)})"
    return None


def read_comparisons(path: Path) -> list[dict]:
    """The comparisons of a comparisons file, in its order; a PipelineError naming the line of the first bad one."""
    if not path.is_file():
        raise PipelineError(f"{path}: comparisons file not found")
    comparisons, lines_of = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PipelineError(f"{path}: line {number}: not JSON ({err.msg}); expected a comparison a line") from None
        problem = comparison_problem(row)
        if problem:
            raise PipelineError(f"{path}: line {number}: {problem}")
        # Labels find their prompt by id: a repeated id would mark both prompts done with one judgement.
        if row["id"] in lines_of:
            raise PipelineError(f"{path}: line {number}: expected a new id, not line {lines_of[row['id']]}'s")
        lines_of[row["id"]] = number
        comparisons.append(row)
    if not comparisons:
        raise PipelineError(f"{path}: no comparisons; expected one JSON object a line")
    return comparisons


def collected(folder: Path, settings: dict) -> bool:
    """Whether `folder` holds both splits' comparisons made with these settings from the same weights (by whichever
    name the model was loaded: a benchmark links the run's model in under another)."""
    try:
        recorded = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    same = {k: v for k, v in recorded.items() if k != "model"} == {k: v for k, v in settings.items() if k != "model"}
    return same and all((folder / f"{split}.jsonl").is_file() for split in SPLITS)


def save_comparisons(folder: Path, settings: dict, splits: dict[str, list[dict]]):
    """Both splits, then the settings they were made with last: a crash before it leaves them to be made again."""
    (folder / SETTINGS_FILE).unlink(missing_ok=True)
    for split, rows in splits.items():
        write_rows(folder / f"{split}.jsonl", rows)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")


def ranked_pairs(replies: list[str], scores: list[float], tie_margin: float, counts: dict
                 ) -> list[tuple[str, str, float]]:
    """Every pair of one prompt's replies as (chosen, rejected, margin), the higher-scored reply chosen; pairs of the
    same reply, and ties (equal scores, or closer than `tie_margin`), are left out and counted in `counts`."""
    pairs = []
    for (a, score_a), (b, score_b) in itertools.combinations(zip(replies, scores), 2):
        if a.strip() == b.strip():
            counts["same_reply"] += 1
        elif score_a == score_b or abs(score_a - score_b) < tie_margin:
            counts["ties"] += 1
        else:
            (chosen, high), (rejected, low) = sorted(((a, score_a), (b, score_b)), key=lambda x: -x[1])
            pairs.append((chosen, rejected, round(high - low, 4)))
    return pairs


def comparison_pairs(rows: list[dict], tie_margin: float) -> tuple[Dataset, dict]:
    """Every pair of one prompt's replies as a preference row with the labeler's margin; pairs whose scores differ by
    less than `tie_margin`, and pairs of the same reply, are dropped and counted."""
    pairs = {"id": [], "prompt": [], "chosen": [], "rejected": [], "margin": [], "kind": []}
    counts = {"prompts": len(rows), "pairs": 0, "ties": 0, "same_reply": 0}
    for row in rows:
        for chosen, rejected, margin in ranked_pairs(row["replies"], row["scores"], tie_margin, counts):
            pairs["id"].append(row["id"])
            pairs["prompt"].append(row["prompt"])
            pairs["chosen"].append([{"role": "assistant", "content": chosen}])
            pairs["rejected"].append([{"role": "assistant", "content": rejected}])
            pairs["margin"].append(margin)
            pairs["kind"].append("labeler")
            counts["pairs"] += 1
    return Dataset.from_dict(pairs), counts


def labelled_splits(folder: Path, tie_margin: float) -> tuple[Dataset, Dataset, str]:
    """The training and held-out pairs of the comparisons in `folder`, and how they were made."""
    if not (folder / SETTINGS_FILE).is_file():
        raise PipelineError(f"{folder}: no comparisons of the SFT model's replies; the reward stage collects them "
                            "(pipeline/reward.py)")
    (train, counts), (held_out, _) = (comparison_pairs(read_comparisons(folder / f"{split}.jsonl"), tie_margin)
                                      for split in SPLITS)
    settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    how = (f"{counts['pairs']} pairs of {counts['prompts']} training prompts x {settings['replies_per_prompt']} "
           f"replies of {settings['model']} sampled at its chat decoding, ranked by the labeler {settings['labeler']} "
           f"({counts['ties']} pairs within the tie margin {tie_margin} and {counts['same_reply']} of the same reply "
           "dropped)")
    return train.remove_columns("id"), held_out, how


def agreement_report(reward_model, tokenizer, rows: list[dict], tie_margin: float) -> dict:
    """How well a reward model agrees with the labeler on held-out comparisons: pairwise accuracy over all pairs and
    over the halves of smaller and larger labeler margin, and the rank correlation with the labeler's scores within
    each prompt (Spearman, averaged over prompts), each with its standard error."""
    from minichatgpt.evaluation.stats import spearman, standard_error
    from minichatgpt.generation import score_conversations

    scores = score_conversations(reward_model, tokenizer, [row["prompt"] + [{"role": "assistant", "content": reply}]
                                                           for row in rows for reply in row["replies"]])
    correct, correlations, start = [], [], 0
    for row in rows:
        model_scores = scores[start : start + len(row["replies"])]
        start += len(row["replies"])
        correlation = spearman(model_scores, row["scores"])
        if correlation is not None:
            correlations.append(correlation)
        for (a, la, ma), (b, lb, mb) in itertools.combinations(zip(row["replies"], row["scores"], model_scores), 2):
            if a.strip() != b.strip() and abs(la - lb) >= tie_margin:
                correct.append((abs(la - lb), float((ma - mb) * (la - lb) > 0)))
    correct.sort()
    median = len(correct) // 2
    buckets = {"all": correct, "smaller_margin": correct[:median], "larger_margin": correct[median:]}
    report = {name: {"accuracy": statistics.fmean(v for _, v in pairs) if pairs else None,
                     "accuracy_se": standard_error(v for _, v in pairs), "pairs": len(pairs),
                     "min_margin": pairs[0][0] if pairs else None}
              for name, pairs in buckets.items()}
    report["spearman"] = {"mean": statistics.fmean(correlations) if correlations else None,
                          "se": standard_error(correlations), "prompts": len(correlations)}
    return report
