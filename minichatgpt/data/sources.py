"""What each source string gives: the documents of a text source or the conversations of a dialog source, each
row validated as it is read and every loss counted by cause (`BadRows`).

A source is a string:
    chitchat                          the `chitchat-dataset` package (7,168 real conversations)
    chat:<dialog source>              a text source: a dialog source's conversations in the chat template
    cornell:<folder>                  Cornell Movie-Dialogs files (movie_lines.txt + movie_conversations.txt)
    wikitext:<file>                   WikiText raw text, one document per ` = Title = ` article
    hub:<dataset id>[:<config>]       a Hugging Face hub dataset (needs internet)
    disk:<folder>                     a `datasets.save_to_disk` folder
    <file|folder|glob>                .txt/.raw (one document per paragraph, line or file), .jsonl/.json/.csv/.parquet
"""

import ast
import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from minichatgpt.data.chat_format import chat_text, escape_special_tokens
from minichatgpt.data.files import (
    TABLE_SUFFIXES,
    disk_dataset,
    expand_paths,
    hub_dataset,
    read_records,
    read_text_file,
)
from minichatgpt.errors import PipelineError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
CORNELL_SEPARATOR = " +++$+++ "
CORNELL_ENCODING = "iso-8859-1"
TEXT_UNITS = ("paragraph", "line", "file")
NO_REPLY = "conversations without a reply"


@dataclass
class BadRows:
    """What one source gave and what it lost: malformed rows are skipped, counted by cause, and fatal past a
    threshold; items dropped inside kept rows and the per-source cap are counted too."""

    source: str
    unit: str = "conversation"
    total: int = 0
    problems: list[str] = field(default_factory=list)
    causes: Counter = field(default_factory=Counter)
    lost_turns: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0
    kept_turns: int = 0
    capped: int = 0

    def add(self, where: str, reason: str, cause: str | None = None, turns: int = 0):
        self.problems.append(f"{where}: {reason}")
        self.causes[cause or reason] += 1
        self.lost_turns += turns

    def keep(self, items: list):
        self.kept = len(items)
        if self.unit == "conversation":
            self.kept_turns = sum(len(conversation) for conversation in items)

    def _causes(self) -> str:
        return ", ".join(f"{cause}: {count}" for cause, count in self.causes.most_common())

    def check(self, max_bad_fraction: float):
        if not self.problems:
            return
        share = len(self.problems) / max(self.total, 1)
        examples = "; ".join(self.problems[:3])
        message = (f"{self.source}: skipped {len(self.problems)} of {self.total} rows ({share:.0%}; {self._causes()}), "
                   f"e.g. {examples}")
        if share > max_bad_fraction:
            raise PipelineError(f"{message}; over data.max_bad_fraction={max_bad_fraction}, fix the file or raise it")
        logger.warning(message)

    def summary(self) -> str:
        """One line: how much was loaded, how much was lost and why."""
        with_turns = self.unit == "conversation"
        line = f"{self.source}: loaded {self.kept} {self.unit}s" + (f" ({self.kept_turns} turns)" if with_turns else "")
        if self.problems:
            line += f"; lost {len(self.problems)} {self.unit}s" + (f" ({self.lost_turns} turns)" if with_turns else "")
            line += f" ({self._causes()})"
        for what, count in self.dropped.items():
            line += f"; dropped {count} {what}"
        if self.capped:
            line += f"; left out {self.capped} over data.max_documents_per_source"
        return line

    def as_dict(self) -> dict:
        return {"source": self.source, "loaded": self.kept, "loaded_turns": self.kept_turns,
                "lost": len(self.problems), "lost_turns": self.lost_turns, "lost_by_cause": dict(self.causes),
                "dropped": dict(self.dropped), "left_out_by_cap": self.capped}


# ---------------------------------------------------------------- text


def split_documents(text: str, unit: str) -> list[str]:
    """A plain text file's documents: paragraphs (blank-line separated), non-blank lines, or the whole file."""
    if unit == "paragraph":
        return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if unit == "line":
        return [line for line in text.split("\n") if line.strip()]
    if unit == "file":
        return [text] if text.strip() else []
    raise PipelineError(f"data.text_unit: unknown unit '{unit}'; use one of {', '.join(TEXT_UNITS)}")


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


def _table_texts(records, column: str, report: BadRows) -> list[str]:
    """The `column` text of each (where, row); rows without text are counted, blank ones dropped."""
    documents = []
    for where, row in records:
        report.total += 1
        if isinstance(row, Exception) or not isinstance(row, dict):
            report.add(where, f"expected an object with a '{column}' field")
        elif column not in row:
            raise PipelineError(f"{where}: no '{column}' field (has {sorted(map(str, row))}); set data.text_column")
        elif row[column] is None or isinstance(row[column], str) and not row[column].strip():
            report.dropped["blank rows"] += 1
        elif not isinstance(row[column], str):
            report.add(where, f"'{column}' is not text", cause=f"'{column}' is {type(row[column]).__name__}, not text")
        else:
            documents.append(row[column])
    return documents


def _column_records(table, column: str, source: str) -> list[tuple[str, dict]]:
    if column not in table.column_names:
        raise PipelineError(f"{source}: no '{column}' column (has {table.column_names}); set data.text_column")
    return [(f"{source} row {i + 1}", {column: value}) for i, value in enumerate(table[column])]


def text_documents(source: str, args, report: BadRows) -> list[str]:
    """The documents of one text source; a conversation without a reply is real text and stays in. Only a `chat:`
    source's documents hold special tokens (its turns'); in the others' text they are escaped."""
    kind, _, location = source.partition(":")
    if kind == "chat":
        return [chat_text(messages) for messages in _source_conversations(location, args, report) if messages]
    return [escape_special_tokens(text) for text in _plain_documents(source, kind, location, args, report)]


def _plain_documents(source: str, kind: str, location: str, args, report: BadRows) -> list[str]:
    if source == "chitchat":
        return [text for text in map(conversation_text, chitchat_conversations(report)) if text]
    if kind == "wikitext":
        return wikitext_articles(read_text_file(Path(location), args.encoding))
    if kind in ("hub", "disk"):
        table = hub_dataset(location) if kind == "hub" else disk_dataset(location)
        return _table_texts(_column_records(table, args.text_column, source), args.text_column, report)
    documents = []
    for path in expand_paths(source):
        if path.suffix.lower() in TABLE_SUFFIXES:
            documents.extend(_table_texts(read_records(path, args.encoding), args.text_column, report))
        else:
            documents.extend(split_documents(read_text_file(path, args.encoding), args.text_unit))
    return documents


# ---------------------------------------------------------------- dialogs


def conversation_text(messages: list[dict]) -> str:
    """A conversation as plain text, one turn per line: how a text source holds it."""
    return "\n".join(turn["content"] for turn in messages)


@functools.cache
def _chitchat_raw() -> list[dict]:
    import chitchat_dataset

    return list(chitchat_dataset.Dataset().values())


def chitchat_conversations(report: BadRows) -> list[list[dict]]:
    """The chitchat-dataset conversations: the first sender is the user, the other the assistant; a sender's
    consecutive messages make one turn, and empty messages are dropped and counted."""
    conversations = []
    for conversation in _chitchat_raw():
        report.total += 1
        turns, first_sender = [], None
        for message in (m for turn in conversation["messages"] for m in turn):
            text = message["text"].strip()
            if not text:
                report.dropped["empty messages"] += 1
                continue
            first_sender = first_sender or message["sender"]
            role = "user" if message["sender"] == first_sender else "assistant"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += " " + text
            else:
                turns.append({"role": role, "content": text})
        conversations.append(turns)
    return conversations


def _cornell_rows(path: Path, encoding: str) -> list[tuple[int, str]]:
    if not path.is_file():
        raise PipelineError(f"{path}: file not found (a Cornell folder holds movie_lines.txt and "
                            "movie_conversations.txt)")
    text = read_text_file(path, encoding, auto_encoding=CORNELL_ENCODING)
    return [(number, row) for number, row in enumerate(text.split("\n"), start=1) if row.strip()]


def _cornell_lines(path: Path, encoding: str) -> tuple[dict, dict]:
    """movie_lines.txt as {line id: (speaker, text)}, and {line id: row number} of rows without 5 fields."""
    lines, malformed = {}, {}
    for number, row in _cornell_rows(path, encoding):
        if row.endswith(CORNELL_SEPARATOR.rstrip()):
            row += " "
        parts = row.split(CORNELL_SEPARATOR, 4)
        if len(parts) == 5:
            lines[parts[0].strip()] = (parts[1].strip(), parts[4].strip())
        else:
            malformed[parts[0].strip()] = number
    if malformed:
        logger.warning(f"{path}: {len(malformed)} rows without 5 fields separated by '{CORNELL_SEPARATOR}', e.g. "
                       f"line {next(iter(malformed.values()))}; conversations using them are lost")
    return lines, malformed


def cornell_conversations(folder: str | Path, bad: BadRows, encoding: str = "auto") -> list[list[dict]]:
    """Conversations of the Cornell Movie-Dialogs Corpus; the first speaker is the user, the other the assistant,
    and consecutive lines of one speaker make one turn. Files are ISO-8859-1 unless `encoding` says otherwise."""
    folder = Path(folder)
    lines_file, convs_file = folder / "movie_lines.txt", folder / "movie_conversations.txt"
    conversation_rows = _cornell_rows(convs_file, encoding)
    lines, malformed = _cornell_lines(lines_file, encoding)
    conversations = []
    for number, row in conversation_rows:
        bad.total += 1
        where = f"{convs_file}:{number}"
        parts = row.split(CORNELL_SEPARATOR)
        try:
            line_ids = ast.literal_eval(parts[3].strip())
        except (IndexError, ValueError, SyntaxError):
            line_ids = None
        if not isinstance(line_ids, list) or not all(isinstance(i, str) for i in line_ids):
            bad.add(where, "expected 4 fields ending in a list of line ids")
            continue
        absent = [i for i in line_ids if i not in lines]
        if absent:
            cause = ("lines malformed in movie_lines.txt" if any(i in malformed for i in absent)
                     else "line ids not in movie_lines.txt")
            bad.add(where, f"{cause} ({', '.join(absent[:3])})", cause=cause, turns=len(line_ids))
            continue
        turns, first_speaker = [], None
        for line_id in line_ids:
            speaker, text = lines[line_id]
            if not text:
                bad.dropped["empty lines"] += 1
                continue
            first_speaker = first_speaker or speaker
            role = "user" if speaker == first_speaker else "assistant"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += " " + text
            else:
                turns.append({"role": role, "content": text})
        problem = validate_messages(turns, need_assistant=False)
        if problem:
            bad.add(where, problem, turns=len(line_ids))
        else:
            conversations.append(turns)
    return conversations


def validate_messages(messages, need_assistant: bool = True) -> str | None:
    """Why `messages` is not a well-formed conversation (with an assistant turn, if `need_assistant`), or None."""
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
    if need_assistant and not any(t["role"] == "assistant" for t in messages):
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
    problem = validate_messages(messages, need_assistant=False)
    return (None, problem) if problem else ([{"role": t["role"], "content": t["content"]} for t in messages], None)


def has_reply(messages: list[dict]) -> bool:
    """Whether an assistant turn answers a user turn: what SFT, reward pairs and RL prompts are made of."""
    return any(turn["role"] == "assistant" and turn["content"].strip() and previous["role"] == "user"
               for previous, turn in zip(messages, messages[1:]))


def dialog_conversations(source: str, args, bad: BadRows) -> list[list[dict]]:
    """The conversations of one dialog source that hold a reply; malformed rows are bad rows, well-formed
    conversations without a reply are dropped and counted, the same for every source."""
    conversations = _source_conversations(source, args, bad)
    answered = [messages for messages in conversations if has_reply(messages)]
    if len(answered) < len(conversations):
        bad.dropped[NO_REPLY] += len(conversations) - len(answered)
    return answered


def _source_conversations(source: str, args, bad: BadRows) -> list[list[dict]]:
    kind, _, location = source.partition(":")
    if source == "chitchat":
        return chitchat_conversations(bad)
    if kind == "cornell":
        return cornell_conversations(location, bad, args.encoding)
    if kind == "hub":
        records = [(f"{source} row {i + 1}", row) for i, row in enumerate(hub_dataset(location))]
    elif kind == "disk":
        records = [(f"{source} row {i + 1}", row) for i, row in enumerate(disk_dataset(location))]
    else:
        records = [rec for path in expand_paths(source) for rec in read_records(path, args.encoding)]
    conversations = []
    for where, row in records:
        bad.total += 1
        messages, problem = _row_to_messages(row)
        if problem:
            turns = row.get("messages") if isinstance(row, dict) else None
            bad.add(where, problem, turns=len(turns) if isinstance(turns, list) else 0)
        else:
            conversations.append(messages)
    return conversations
