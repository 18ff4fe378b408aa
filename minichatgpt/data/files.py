"""Reading files as they are written: encodings refused rather than garbled, paths, folders and globs, table
formats with line numbers, and `datasets` folders or hub ids."""

import codecs
import csv
import glob as globlib
import io
import json
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from minichatgpt.errors import PipelineError

TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = {".txt", ".raw", ".text", ".md"}


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


class CutShort(ValueError):
    """A JSON line that ends before its object does, as a crash or a full disk leaves the last line of a file that is
    appended to (arena votes, labels): a lost row, not a malformed one."""


def json_line(line: bytes | str):
    """One JSON Lines line as its value (bytes: UTF-8 that is valid or cut short); CutShort when it stops
    mid-character or mid-object, ValueError when it is not JSON."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise CutShort("cut short mid-character") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        ran_out = err.pos >= len(line.rstrip()) or err.msg.startswith("Unterminated string")
        if ran_out and line.lstrip().startswith(("{", "[")):
            raise CutShort(f"cut short ({err.msg})") from None
        raise ValueError(f"not valid JSON ({err.msg})") from None


def _cut_or_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data"
    return True


def json_lines(path: Path, encoding: str = "auto") -> list[tuple[str, object]]:
    """A JSON Lines file's values as (where, value); a line that cannot be read stands as its CutShort or ValueError.
    A UTF-8 file whose only flaw is a line cut mid-character is decoded line by line, so that the cut line spoils no
    other; any other decoding flaw stops with read_text_file's message."""
    try:
        lines = read_text_file(path, encoding).split("\n")
    except PipelineError:
        if not path.is_file():
            raise
        raw = path.read_bytes().removeprefix(codecs.BOM_UTF8).replace(b"\r\n", b"\n").split(b"\n")
        if encoding not in ("auto", "utf-8", "utf8") or not all(map(_cut_or_utf8, raw)):
            raise
        lines = raw
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append((f"{path}:{number}", json_line(line)))
            except ValueError as err:
                records.append((f"{path}:{number}", err))
    return records


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
        return json_lines(path, encoding)
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
        # A whole article in one cell is text like any other: no cap below what a string can hold.
        csv.field_size_limit(2**31 - 1)
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
