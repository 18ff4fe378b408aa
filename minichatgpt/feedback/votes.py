"""Arena votes: each one appended to a JSON Lines file as a TRL preference row (prompt, chosen, rejected) the reward
stage reads, or with both replies for a tie or a both-bad vote; read back and tallied per pair of models.

    python pipeline/app.py --tally votes/quickstart.jsonl
"""

import json
import os
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from minichatgpt.data.files import json_lines

VOTES = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
vote_file_lock = threading.Lock()


def append_vote(path: Path, row: dict):
    """Appends one vote as a JSON line and returns once it is on disk: a crash or Ctrl-C afterwards cannot lose it.
    One during the write leaves at most a partial last line, which the next vote starts a new line after."""
    line = json.dumps(row, ensure_ascii=False) + "\n"
    with vote_file_lock:
        created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as file:
            if file.seek(0, os.SEEK_END) > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    line = "\n" + line
            file.write(line.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        if created:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def vote_row(round_: dict, vote: str) -> dict:
    """The arena round as a preference row: TRL's prompt/chosen/rejected for A or B, both replies for the others."""
    (model_a, model_b), (reply_a, reply_b) = round_["models"], round_["replies"]
    row = {"prompt": round_["prompt"]}
    if vote in ("A", "B"):
        winner = 0 if vote == "A" else 1
        row |= {"chosen": [{"role": "assistant", "content": round_["replies"][winner]}],
                "rejected": [{"role": "assistant", "content": round_["replies"][1 - winner]}],
                "chosen_model": round_["models"][winner], "rejected_model": round_["models"][1 - winner]}
    else:
        row |= {"reply_a": [{"role": "assistant", "content": reply_a}],
                "reply_b": [{"role": "assistant", "content": reply_b}]}
    revision_a, revision_b = round_.get("revisions") or (None, None)
    return row | {"vote": vote, "model_a": model_a, "model_b": model_b, "revision_a": revision_a,
                  "revision_b": revision_b, "decoding": round_["decoding"],
                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def read_appended_rows(path: Path) -> list[dict]:
    """The JSON objects of a file `append_vote` writes; unreadable lines (a write cut short by a crash) are left out."""
    if not path.is_file():
        return []
    return [row for _, row in json_lines(path) if isinstance(row, dict)]


def read_votes(path: Path) -> list[dict]:
    """The votes of a vote file; unreadable lines (a write cut short by a crash) are left out."""
    return [row for row in read_appended_rows(path)
            if row.get("vote") in VOTES and "model_a" in row and "model_b" in row]


def voted_model(row: dict, side: str) -> str:
    """A side's model as the tally counts it: with its hub revision, so that a retrained model is counted apart."""
    revision = row.get(f"revision_{side}")
    return f"{row[f'model_{side}']} @ {revision}" if revision else row[f"model_{side}"]


def tally_table(votes: list[dict]) -> str:
    """Win rates per pair of models (each revision apart) as a Markdown table: wins over the decided votes, with
    every count."""
    counts = {}
    for row in votes:
        first, second = sorted((voted_model(row, "a"), voted_model(row, "b")))
        winner = voted_model(row, row["vote"].lower()) if row["vote"] in ("A", "B") else row["vote"]
        counts.setdefault((first, second), Counter())[winner] += 1
    if not counts:
        return "No votes yet."
    lines = ["| model 1 | model 2 | 1 wins | 2 wins | ties | both bad | votes | win rate of 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for (first, second), count in sorted(counts.items()):
        decided = count[first] + count[second]
        rate = f"{count[first] / decided:.0%}" if decided else "-"
        lines.append(f"| {first} | {second} | {count[first]} | {count[second]} | {count['tie']} | "
                     f"{count['both_bad']} | {count.total()} | {rate} |")
    return "\n".join(lines)
