"""People's judgements of the SFT model's replies, for the labeling page of pipeline/app.py: the comparisons file the
reward stage wrote (one prompt and its sampled replies a line) read and checked, the prompts already judged or
skipped, and the judgement rows appended to the labels file in the comparisons' own shape (the replies in the file's
order, one score per reply, higher = better), so the reward stage reads a person's judgements as it reads the AI
labeler's.

    python pipeline/app.py --label runs/quickstart/comparisons/train.jsonl --labels labels/quickstart.jsonl
"""

import random
import threading
from datetime import datetime, timezone
from pathlib import Path

from minichatgpt.errors import PipelineError
from minichatgpt.feedback.votes import append_vote, read_appended_rows

LABEL_MODES = ("rank", "score")
SCORES = (1, 2, 3, 4, 5)
label_file_lock = threading.Lock()


def read_labels(path: Path) -> dict[str, dict]:
    """The labels file's rows by prompt id; unreadable lines (a write cut short by a crash) are left out."""
    return {row["id"]: row for row in read_appended_rows(path) if isinstance(row.get("id"), str)}


def progress(comparisons: list[dict], labels: dict[str, dict]) -> str:
    done = [labels[row["id"]] for row in comparisons if row["id"] in labels]
    skipped = sum(bool(row.get("skipped")) for row in done)
    line = f"{len(done) - skipped} of {len(comparisons)} prompts labelled"
    return f"{line}, {skipped} skipped" if skipped else line


def display_order(comparison: dict, seed: int) -> list[int]:
    """The replies' indexes in the order the page shows them: shuffled, so that the order the model sampled them in
    (or the AI labeler's) cannot sway the person, and the same for the prompt on every visit."""
    count = len(comparison["replies"])
    return random.Random(f"{seed}:{comparison['id']}").sample(range(count), count)


def person_scores(shown_choices: list[int | None], order: list[int], mode: str) -> list[int]:
    """The person's choices for the replies as shown (ranks, 1 = best, or scores 1-5) as one score per reply in the
    file's order, higher = better; a PipelineError naming the replies, as numbered on the page, left without one."""
    missing = [number for number, choice in enumerate(shown_choices, 1) if choice is None]
    if missing:
        raise PipelineError(f"{mode} every reply before submitting (missing: reply {', '.join(map(str, missing))})")
    choices = [shown_choices[order.index(original)] for original in range(len(order))]
    return [len(choices) + 1 - rank for rank in choices] if mode == "rank" else choices


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def judgement_row(comparison: dict, scores: list[int], mode: str) -> dict:
    return {"id": comparison["id"], "prompt": comparison["prompt"], "replies": comparison["replies"],
            "scores": scores, "mode": mode, "labeler": "person", "model": comparison.get("model"),
            "revision": comparison.get("revision"), "time": now()}


def skipped_row(comparison: dict) -> dict:
    return {"id": comparison["id"], "skipped": True, "labeler": "person", "model": comparison.get("model"),
            "revision": comparison.get("revision"), "time": now()}


def append_label(path: Path, row: dict) -> bool:
    """Appends the row (on disk when this returns) unless its prompt has a line already, as when two tabs showed the
    same prompt: a second judgement would count its pairs twice. Returns whether it was appended."""
    with label_file_lock:
        if row["id"] in read_labels(path):
            return False
        append_vote(path, row)
        return True
