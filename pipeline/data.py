"""Data sources for every stage: plain text and dialogs, validated as they load (preference pairs, built on
these, are in pipeline/preferences.py).

A source is a string:
    chitchat                          the `chitchat-dataset` package (7,168 real conversations)
    cornell:<folder>                  Cornell Movie-Dialogs files (movie_lines.txt + movie_conversations.txt)
    wikitext:<file>                   WikiText raw text, one document per ` = Title = ` article
    hub:<dataset id>[:<config>]       a Hugging Face hub dataset (needs internet)
    disk:<folder>                     a `datasets.save_to_disk` folder
    <file|folder|glob>                .txt/.raw (one document per paragraph), .jsonl/.json/.csv/.parquet
"""

import ast
import glob as globlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, load_dataset, load_from_disk

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = {".txt", ".raw", ".text", ".md"}
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
CORNELL_SEPARATOR = " +++$+++ "


@dataclass
class BadRows:
    """Malformed rows of one source: skipped, counted, and fatal past a threshold."""

    source: str
    total: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str):
        self.problems.append(f"{where}: {reason}")

    def check(self, max_bad_fraction: float):
        if not self.problems:
            return
        share = len(self.problems) / max(self.total, 1)
        examples = "; ".join(self.problems[:3])
        message = f"{self.source}: skipped {len(self.problems)} of {self.total} rows ({share:.0%}), e.g. {examples}"
        if share > max_bad_fraction:
            raise PipelineError(f"{message}; over data.max_bad_fraction={max_bad_fraction}, fix the file or raise it")
        logger.warning(message)


# ---------------------------------------------------------------- reading files


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    raw = path.read_bytes()
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        try:
            return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as err:
            raise PipelineError(
                f"{path}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); if it is latin-1, "
                "set data.encoding: latin-1 in the recipe, or re-save the file as UTF-8"
            ) from None
    if any(b > 127 for b in raw):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raise PipelineError(
                f"{path}: looks like UTF-8 but data.encoding is {encoding}; set data.encoding: utf-8"
            )
    return raw.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


def expand_paths(location: str) -> list[Path]:
    path = Path(location)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES | set(TABLE_SUFFIXES))
        if not files:
            raise PipelineError(f"{location}: folder has no .txt/.raw/.jsonl/.json/.csv/.parquet files")
        return files
    if any(ch in location for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(location, recursive=True) if Path(p).is_file())
        if not files:
            raise PipelineError(f"{location}: glob matches no files")
        return files
    if not path.exists():
        raise PipelineError(f"{location}: file not found")
    return [path]


def read_records(path: Path) -> list[tuple[str, object]]:
    """Rows of a JSONL/JSON/CSV/Parquet file as (where, row), with line numbers for JSONL."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(read_text_file(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                records.append((f"{path}:{number}", ValueError(f"not valid JSON ({err.msg})")))
        return records
    if suffix == ".json":
        try:
            data = json.loads(read_text_file(path))
        except json.JSONDecodeError as err:
            raise PipelineError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise PipelineError(f"{path}: expected a JSON list of objects (or JSON Lines in a .jsonl file)")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    if suffix in (".csv", ".parquet"):
        table = load_dataset(TABLE_SUFFIXES[suffix], data_files=str(path), split="train")
        return [(f"{path} row {i + 1}", row) for i, row in enumerate(table)]
    raise PipelineError(f"{path}: unsupported file type '{suffix}'; use .txt, .raw, .jsonl, .json, .csv or .parquet")


def hub_dataset(spec: str):
    name, _, config = spec.partition(":")
    try:
        return load_dataset(name, config or None, split="train")
    except Exception as err:  # noqa: BLE001 - any hub/offline failure becomes one line
        reason = (str(err).strip().splitlines() or [""])[0]
        raise PipelineError(f"hub:{spec}: could not load from the hub ({type(err).__name__}: {reason}); "
                            "needs internet, or use a local file") from None


def _limit(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


# ---------------------------------------------------------------- text


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def wikitext_articles(text: str) -> list[str]:
    """Split WikiText raw text at top-level ` = Title = ` lines, keeping `@-@`-style tokens as they are."""
    articles, current = [], []
    for line in text.split("\n"):
        if WIKITEXT_TITLE.match(line) and current:
            articles.append("\n".join(current).strip())
            current = []
        current.append(line)
    articles.append("\n".join(current).strip())
    return [a for a in articles if a]


def _text_column(table, column: str, where: str) -> list[str]:
    if column not in table.column_names:
        raise PipelineError(f"{where}: no '{column}' column (has {table.column_names}); set data.text_column")
    return [t for t in table[column] if isinstance(t, str) and t.strip()]


def _text_documents(source: str, args) -> list[str]:
    kind, _, location = source.partition(":")
    if source == "chitchat":
        return ["\n".join(turn["content"] for turn in conv) for conv in _chitchat_conversations()]
    if kind == "wikitext":
        return wikitext_articles(read_text_file(Path(location), args.encoding))
    if kind == "hub":
        return _text_column(hub_dataset(location), args.text_column, source)
    if kind == "disk":
        if not Path(location).is_dir():
            raise PipelineError(f"{location}: save_to_disk folder not found")
        return _text_column(load_from_disk(location), args.text_column, source)
    documents = []
    for path in expand_paths(source):
        if path.suffix.lower() in TABLE_SUFFIXES:
            rows = read_records(path)
            for where, row in rows:
                if isinstance(row, Exception) or not isinstance(row, dict):
                    raise PipelineError(f"{where}: expected a JSON object with a '{args.text_column}' field")
                if args.text_column not in row:
                    raise PipelineError(f"{where}: no '{args.text_column}' field; set data.text_column")
                if isinstance(row[args.text_column], str) and row[args.text_column].strip():
                    documents.append(row[args.text_column])
        else:
            documents.extend(_paragraphs(read_text_file(path, args.encoding)))
    return documents


def _gather(sources: list[str], read, args, setting: str, empty: str) -> list:
    """What `read(source, args)` gives for every source, capped per source; an empty source is an error."""
    if not sources:
        raise PipelineError(f"data.{setting} is empty; name at least one source")
    items = []
    for source in sources:
        found = _limit(read(source, args), args.max_documents_per_source)
        if not found:
            raise PipelineError(f"{source}: {empty}")
        items.extend(found)
    return items


def load_text(args) -> Dataset:
    """All text sources as one dataset with a `text` column."""
    documents = _gather(args.text_sources, _text_documents, args, "text_sources",
                        "no text found (empty file or everything filtered out)")
    return Dataset.from_dict({"text": documents})


# ---------------------------------------------------------------- dialogs


def _chitchat_conversations() -> list[list[dict]]:
    import chitchat_dataset

    conversations = []
    for conv in chitchat_dataset.Dataset().values():
        turns = [" ".join(m["text"].strip() for m in turn if m["text"].strip()) for turn in conv["messages"]]
        turns = [t for t in turns if t]
        conversations.append(
            [{"role": ROLES[1 + i % 2], "content": text} for i, text in enumerate(turns)]
        )
    return conversations


def cornell_conversations(folder: str | Path, bad: BadRows) -> list[list[dict]]:
    """Conversations of the Cornell Movie-Dialogs Corpus; the first speaker is the user, the other the assistant."""
    folder = Path(folder)
    lines_file, convs_file = folder / "movie_lines.txt", folder / "movie_conversations.txt"
    for path in (lines_file, convs_file):
        if not path.is_file():
            raise PipelineError(f"{path}: file not found (a Cornell folder holds movie_lines.txt and "
                                "movie_conversations.txt)")
    lines = {}
    for row in lines_file.read_text(encoding="iso-8859-1").splitlines():
        parts = row.split(CORNELL_SEPARATOR)
        if len(parts) == 5:
            lines[parts[0].strip()] = (parts[1].strip(), parts[4].strip())
    conversations, missing = [], 0
    for number, row in enumerate(convs_file.read_text(encoding="iso-8859-1").splitlines(), start=1):
        if not row.strip():
            continue
        bad.total += 1
        parts = row.split(CORNELL_SEPARATOR)
        try:
            line_ids = ast.literal_eval(parts[3].strip())
        except (IndexError, ValueError, SyntaxError):
            bad.add(f"{convs_file}:{number}", "expected 4 fields ending in a list of line ids")
            continue
        turns, first_speaker = [], None
        for line_id in line_ids:
            if line_id not in lines:
                missing += 1
                continue
            speaker, text = lines[line_id]
            if not text:
                continue
            first_speaker = first_speaker or speaker
            role = "user" if speaker == first_speaker else "assistant"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += " " + text
            else:
                turns.append({"role": role, "content": text})
        if turns:
            conversations.append(turns)
    if missing:
        logger.warning(f"{folder}: {missing} lines listed in movie_conversations.txt are not in movie_lines.txt; "
                       "skipped")
    return conversations


def validate_messages(messages) -> str | None:
    """Why `messages` is not a usable conversation, or None."""
    if not isinstance(messages, list) or not messages:
        return "empty conversation" if isinstance(messages, list) else "'messages' is not a list"
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict):
            return f"turn {i} is not an object"
        if "role" not in turn or "content" not in turn:
            return f"turn {i} has no {'role' if 'role' not in turn else 'content'}"
        if turn["role"] not in ROLES:
            return f"turn {i} has unknown role '{turn['role']}' (expected system, user or assistant)"
        if not isinstance(turn["content"], str):
            return f"turn {i} content is not text"
    if not any(t["role"] == "assistant" for t in messages):
        return "no assistant turn"
    return None


def _row_to_messages(row) -> tuple[list | None, str | None]:
    if isinstance(row, Exception):
        return None, str(row)
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            messages = prompt + completion
        else:
            return None, "prompt and completion must both be text or both be message lists"
    else:
        return None, "expected a 'messages' list or 'prompt' and 'completion' fields"
    problem = validate_messages(messages)
    return (None, problem) if problem else ([{"role": t["role"], "content": t["content"]} for t in messages], None)


def _dialog_conversations(source: str, args) -> list[list[dict]]:
    kind, _, location = source.partition(":")
    bad = BadRows(source)
    if source == "chitchat":
        return _chitchat_conversations()
    if kind == "cornell":
        conversations = cornell_conversations(location, bad)
    else:
        if kind == "hub":
            table = hub_dataset(location)
            records = [(f"{source} row {i + 1}", row) for i, row in enumerate(table)]
        elif kind == "disk":
            records = [(f"{source} row {i + 1}", row) for i, row in enumerate(load_from_disk(location))]
        else:
            records = [rec for path in expand_paths(source) for rec in read_records(path)]
        conversations = []
        for where, row in records:
            bad.total += 1
            messages, problem = _row_to_messages(row)
            if problem:
                bad.add(where, problem)
            else:
                conversations.append(messages)
    bad.check(args.max_bad_fraction)
    return conversations


def load_dialogs(args) -> Dataset:
    """All dialog sources as one dataset with a `messages` column."""
    conversations = _gather(args.dialog_sources, _dialog_conversations, args, "dialog_sources",
                            "no usable conversations (empty, or every row was malformed)")
    return Dataset.from_dict({"messages": conversations})


def split_eval(dataset: Dataset, args) -> tuple[Dataset, Dataset]:
    """The fixed, seeded held-out split shared by every stage."""
    if len(dataset) < 2:
        raise PipelineError(f"only {len(dataset)} example(s): need at least 2 to hold one out for evaluation")
    n_eval = min(max(1, round(len(dataset) * args.eval_fraction)), args.max_eval_examples, len(dataset) - 1)
    parts = dataset.train_test_split(test_size=n_eval, seed=args.split_seed, shuffle=True)
    return parts["train"], parts["test"]


def conversation_windows(messages: list[dict], max_turns: int) -> list[list[dict]]:
    """Cut a long conversation into windows of at most `max_turns` turns, each starting at a user turn and ending
    at an assistant turn; a leading system turn is repeated in every window."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    windows, start = [], 0
    while start < len(turns):
        while start < len(turns) and turns[start]["role"] != "user":
            start += 1
        end = min(start + max_turns, len(turns))
        while end > start and turns[end - 1]["role"] != "assistant":
            end -= 1
        if end <= start:
            break
        windows.append(system + turns[start:end])
        start = end
    return windows


def prompt_reply_pairs(conversations, max_context_turns: int) -> list[tuple[list[dict], str]]:
    """(history ending at a user turn, the real assistant reply) for every assistant turn that follows a user."""
    pairs = []
    for messages in conversations:
        for i, turn in enumerate(messages):
            if turn["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user" and turn["content"].strip():
                pairs.append((messages[max(0, i - max_context_turns):i], turn["content"]))
    return pairs
