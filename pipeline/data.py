"""Data sources for every stage: plain text and dialogs, validated as they load (preference pairs, built on
these, are in pipeline/preferences.py).

A source is a string:
    chitchat                          the `chitchat-dataset` package (7,168 real conversations)
    cornell:<folder>                  Cornell Movie-Dialogs files (movie_lines.txt + movie_conversations.txt)
    wikitext:<file>                   WikiText raw text, one document per ` = Title = ` article
    hub:<dataset id>[:<config>]       a Hugging Face hub dataset (needs internet)
    disk:<folder>                     a `datasets.save_to_disk` folder
    <file|folder|glob>                .txt/.raw (one document per paragraph, line or file), .jsonl/.json/.csv/.parquet

Every source is read as written or refused with one line: a file in another encoding than the one it is read
with fails instead of turning into mojibake, and whatever a source loses on the way (malformed rows, dialog lines
that cannot be found) is counted, reported, and fatal past `data.max_bad_fraction`.
"""

import ast
import codecs
import csv
import glob as globlib
import io
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = {".txt", ".raw", ".text", ".md"}
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
CORNELL_SEPARATOR = " +++$+++ "
CORNELL_ENCODING = "iso-8859-1"
TEXT_UNITS = ("paragraph", "line", "file")


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


def data_card(reports: list[BadRows]) -> str:
    """The model card's account of its data: one line per source."""
    return "\n".join(f"- {report.summary()}" for report in reports)


# ---------------------------------------------------------------- reading files


def read_text_file(path: Path, encoding: str = "auto", auto_encoding: str = "utf-8") -> str:
    """A file's text with Windows and old Mac line ends read as \\n; `encoding` 'auto' means `auto_encoding`.
    A file that is plainly in another encoding than the one it is read with is refused, never garbled."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    name = auto_encoding if encoding == "auto" else encoding
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise PipelineError(f"data.encoding: unknown encoding '{encoding}'; use auto, utf-8, latin-1 or another "
                            "Python codec name") from None
    read_as = f"data.encoding is {encoding}" if encoding != "auto" else f"it is read as {name} (data.encoding: auto)"
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not codec.startswith("utf-16"):
        raise PipelineError(f"{path}: starts with a UTF-16 byte order mark but {read_as}; set data.encoding: utf-16 "
                            "or re-save the file as UTF-8")
    if codec in ("utf-8", "utf-8-sig"):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise PipelineError(
                f"{path}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); if it is latin-1, "
                "set data.encoding: latin-1 in the recipe, or re-save the file as UTF-8"
            ) from None
    else:
        if not codec.startswith("utf") and not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                raise PipelineError(f"{path}: looks like UTF-8 but {read_as}; set data.encoding: utf-8")
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as err:
            raise PipelineError(f"{path}: not valid {name} ({err.reason} at offset {err.start}); set data.encoding "
                                "to the file's encoding") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


def read_records(path: Path, encoding: str = "auto") -> list[tuple[str, object]]:
    """Rows of a JSONL/JSON/CSV/Parquet file as (where, row), with line numbers for JSONL and CSV; CSV cells stay
    text as written (no guessed numbers or missing values)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(read_text_file(path, encoding).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                records.append((f"{path}:{number}", ValueError(f"not valid JSON ({err.msg})")))
        return records
    if suffix == ".json":
        try:
            data = json.loads(read_text_file(path, encoding))
        except json.JSONDecodeError as err:
            raise PipelineError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise PipelineError(f"{path}: expected a JSON list of objects (or JSON Lines in a .jsonl file)")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text_file(path, encoding), newline=""))
        return [(f"{path}:{reader.line_num}", row) for row in reader]
    if suffix == ".parquet":
        table = load_dataset("parquet", data_files=str(path), split="train")
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


def disk_dataset(location: str) -> Dataset:
    """One dataset saved with `save_to_disk`; a folder of splits names the split folders to pick from."""
    if not Path(location).is_dir():
        raise PipelineError(f"{location}: save_to_disk folder not found")
    try:
        data = load_from_disk(location)
    except FileNotFoundError:
        raise PipelineError(f"disk:{location}: not a datasets.save_to_disk folder (no dataset_info.json or "
                            "dataset_dict.json)") from None
    if isinstance(data, DatasetDict):
        raise PipelineError(f"disk:{location}: holds the splits {list(data)}, not one dataset; name one split's "
                            f"folder, e.g. disk:{Path(location) / next(iter(data), 'train')}")
    return data


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


def _text_documents(source: str, args, report: BadRows) -> list[str]:
    kind, _, location = source.partition(":")
    if source == "chitchat":
        return ["\n".join(turn["content"] for turn in conv) for conv in _chitchat_conversations()]
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


def _gather(sources: list[str], read, args, setting: str, unit: str, empty: str, reports: list | None) -> list:
    """What `read(source, args, report)` gives for every source, capped per source, with one report per source
    (appended to `reports`); an empty source, or one that lost too much, is an error."""
    if not sources:
        raise PipelineError(f"data.{setting} is empty; name at least one source")
    items = []
    for source in sources:
        report = BadRows(source, unit)
        found = read(source, args, report)
        report.check(args.max_bad_fraction)
        kept = _limit(found, args.max_documents_per_source)
        report.capped = len(found) - len(kept)
        report.keep(kept)
        if not kept:
            raise PipelineError(f"{source}: {empty}")
        logger.info(report.summary())
        if reports is not None:
            reports.append(report)
        items.extend(kept)
    return items


def _limit(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def load_text(args, reports: list | None = None) -> Dataset:
    """All text sources as one dataset with a `text` column; `reports` gets what each source gave and lost."""
    documents = _gather(args.text_sources, _text_documents, args, "text_sources", "document",
                        "no text found (empty file or everything filtered out)", reports)
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
        problem = validate_messages(turns)
        if problem:
            bad.add(where, problem, turns=len(line_ids))
        else:
            conversations.append(turns)
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


def _dialog_conversations(source: str, args, bad: BadRows) -> list[list[dict]]:
    kind, _, location = source.partition(":")
    if source == "chitchat":
        return _chitchat_conversations()
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


def load_dialogs(args, reports: list | None = None) -> Dataset:
    """All dialog sources as one dataset with a `messages` column; `reports` gets what each source gave and lost."""
    conversations = _gather(args.dialog_sources, _dialog_conversations, args, "dialog_sources", "conversation",
                            "no usable conversations (empty, or every row was malformed)", reports)
    return Dataset.from_dict({"messages": conversations})


def split_eval(dataset: Dataset, args) -> tuple[Dataset, Dataset]:
    """The fixed, seeded held-out split shared by every stage."""
    if len(dataset) < 2:
        unit = (f" (text files give one document per {args.text_unit}, data.text_unit; set it to line for one "
                "document per line)" if "text" in dataset.column_names else "")
        raise PipelineError(f"only {len(dataset)} example(s): need at least 2 to hold one out for evaluation{unit}")
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
