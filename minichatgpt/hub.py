"""The local model hub: one name per model, a link to its newest revision, with a model card and older revisions kept.

Each push or card edit makes a complete folder `{hub_dir}/.revisions/{name}/{revision}` and then points the symbolic
link `{hub_dir}/{name}` at it in one atomic rename, so loading `{hub_dir}/{name}` finds a whole model at every instant.

    python -m minichatgpt.hub list --hub_dir hub
"""

import argparse
import contextlib
import fcntl
import importlib.metadata
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import yaml
from safetensors import SafetensorError

from minichatgpt.errors import PipelineError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
METADATA_FILE = "minichatgpt.json"
CARD_FILE = "README.md"
REVISIONS_DIR = ".revisions"
DEFAULT_KEEP_REVISIONS = 3
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers")


def check_name(name: str, what: str = "hub name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise PipelineError(
            f"{what}: '{name}' is not a valid name; use letters, digits, '.', '_' and '-' only (no paths)"
        )
    return name


def hub_path(hub_dir: str | os.PathLike, name: str) -> Path:
    return Path(hub_dir) / check_name(name)


# Beside the weights, what a push writes: tokenizer, card, plots, metadata.
PUSH_OVERHEAD_BYTES = 50 * 2**20


def check_writable(hub_dir: str | os.PathLike, model=None):
    """Fail before training when the hub cannot take the model: not writable, or with less free space than its
    weights and PUSH_OVERHEAD_BYTES."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
    min_free_bytes = weights + PUSH_OVERHEAD_BYTES
    hub_dir = Path(hub_dir)
    try:
        hub_dir.mkdir(parents=True, exist_ok=True)
        probe = hub_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PipelineError(f"{hub_dir}: hub folder is not writable ({err.strerror}); pick another hub_dir") from None
    free = shutil.disk_usage(hub_dir).free
    if free < min_free_bytes:
        raise PipelineError(f"{hub_dir}: only {free / 2**20:.1f} MiB free on disk, need at least "
                            f"{min_free_bytes / 2**20:.1f} MiB (the model's weights and "
                            f"{PUSH_OVERHEAD_BYTES >> 20} MiB for the rest of a push); free some space or pick another "
                            "hub_dir")


def library_versions() -> dict[str, str]:
    """The versions of the libraries a model or report was made with; a card read next month still says."""
    return {library: importlib.metadata.version(library) for library in LIBRARIES}


def push(
    hub_dir: str | os.PathLike,
    name: str,
    write: Callable[[Path], None],
    metadata: dict,
    card_body: str,
    card_metadata: dict,
    keep_revisions: int = DEFAULT_KEEP_REVISIONS,
) -> Path:
    """Write a model with `write(folder)` into a staging folder, make it a revision, then point the name at it.

    A crash while writing leaves only a staging folder; the name switches from the old model to the new one in one
    atomic rename, so it holds a complete model at every instant. Revisions beyond the newest `keep_revisions` older
    ones are deleted afterwards.
    """
    target = hub_path(hub_dir, name)
    check_keep_revisions(keep_revisions)
    hub_dir = Path(hub_dir)
    hub_dir.mkdir(parents=True, exist_ok=True)
    staging = _claim(hub_dir, f".staging-{name}-{os.getpid()}")
    try:
        write(staging)
        if not any(staging.glob("*.safetensors")) and metadata.get("stage") != "tokenizer":
            raise PipelineError(f"{name}: nothing was written as safetensors; refusing to push")
        versions = library_versions()
        metadata = {"name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "library_versions": versions, **metadata}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        front = yaml.safe_dump(card_metadata, sort_keys=False, allow_unicode=True)
        made_with = ", ".join(f"{library} {version}" for library, version in versions.items())
        (staging / CARD_FILE).write_text(f"---\n{front}---\n\n{card_body.strip()}\n\nMade with {made_with}.\n",
                                         encoding="utf-8")
        with _revision_lock(hub_dir, name):
            _publish(target, staging, keep_revisions)
    except BaseException as err:
        # Only a failed push: once published, the staging name is free and another thread may have claimed it.
        shutil.rmtree(staging, ignore_errors=True)
        # A full disk or a broken filesystem: an OSError, or safetensors' own error when it writes the weights.
        if isinstance(err, (OSError, SafetensorError)):
            cause = getattr(err, "strerror", None) or str(err).removeprefix("Error while serializing: I/O error: ")
            held = "still holds its previous model" if target.exists() else "was not created"
            raise PipelineError(f"{hub_dir}: pushing {name} failed ({cause}); nothing half-written was left, "
                                f"{target} {held}") from None
        raise
    return target


def add_evaluation(
    hub_dir: str | os.PathLike, name: str, metrics: dict, keep_revisions: int = DEFAULT_KEEP_REVISIONS
) -> Path:
    """Put held-out evaluation numbers into the model card's `model-index`, as a new revision of the model.

    The result whose dataset is "held-out evaluation" is replaced, other results are kept; the revision before the
    edit keeps its card unchanged.
    """
    target = hub_path(hub_dir, name)
    check_keep_revisions(keep_revisions)
    if not target.is_dir():
        raise PipelineError(f"{target}: no model of that name in the hub; push it before adding its evaluation")
    not_numbers = [key for key, value in metrics.items()
                   if isinstance(value, bool) or not isinstance(value, (int, float))]
    if not_numbers:
        raise PipelineError(f"{target}: evaluation metrics must be numbers, not {', '.join(not_numbers)}")
    # Copied inside the lock: a push landing between the copy and the swap would otherwise be undone.
    with _revision_lock(hub_dir, name):
        current = target.resolve()
        meta, body = _read_card(current / CARD_FILE)
        results = meta.setdefault("model-index", [{"name": "minichatgpt", "results": []}])[0]["results"]
        results[:] = [r for r in results if r.get("dataset", {}).get("name") != "held-out evaluation"]
        results.append({"task": {"type": meta.get("pipeline_tag", "text-generation")},
                        "dataset": {"name": "held-out evaluation", "type": "minichatgpt"},
                        "metrics": [{"type": k, "value": round(v, 4)} for k, v in metrics.items()]})
        staging = _claim(Path(hub_dir), f".staging-{name}-{os.getpid()}")
        try:
            shutil.copytree(current, staging, dirs_exist_ok=True, copy_function=_link_weights_copy_rest)
            card = staging / CARD_FILE
            card.unlink(missing_ok=True)
            card.write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n{body}",
                            encoding="utf-8")
            _publish(target, staging, keep_revisions)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def check_keep_revisions(keep_revisions):
    if isinstance(keep_revisions, bool) or not isinstance(keep_revisions, int) or keep_revisions < 0:
        raise PipelineError(f"keep_revisions must be a whole number of at least 0, got {keep_revisions!r}")


@contextlib.contextmanager
def _revision_lock(hub_dir: str | os.PathLike, name: str):
    """One writer of a name's revisions at a time, so that pruning never deletes a revision another push is about
    to link; the kernel drops the lock of a killed process. Names start with a letter or digit, so the lock file
    never takes the place of a name's revisions folder."""
    revisions = Path(hub_dir) / REVISIONS_DIR
    revisions.mkdir(parents=True, exist_ok=True)
    with open(revisions / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _revision_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def _claim(parent: Path, stem: str) -> Path:
    """A new empty folder `stem`, or `stem-1`, `stem-2`... when taken: mkdir is the exclusive claim, and unlike a
    temporary folder's the new folder has the usual permissions, so others may read the hub."""
    for suffix in itertools.count():
        folder = parent / (stem if suffix == 0 else f"{stem}-{suffix}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True)
            return folder


def _publish(target: Path, staging: Path, keep_revisions: int):
    """Move a complete folder in as the newest revision and point `target` at it; called with the name's lock held."""
    revisions = target.parent / REVISIONS_DIR / target.name
    if target.is_dir() and not target.is_symlink():
        # A hub written before revisions were linked has the model itself at the name. It becomes a revision once;
        # only this migration leaves the name empty for a moment, between the two renames.
        os.replace(target, _claim(revisions, _revision_stamp()))
    revision = _claim(revisions, _revision_stamp())
    os.replace(staging, revision)  # a rename may replace an empty folder, so the claim does not stand in its way
    link = target.with_name(f".link-{target.name}")
    link.unlink(missing_ok=True)
    os.symlink(Path(REVISIONS_DIR) / target.name / revision.name, link, target_is_directory=True)
    os.replace(link, target)
    older = sorted(p for p in revisions.iterdir() if p.is_dir() and p != revision)
    for stale in older[:max(0, len(older) - keep_revisions)]:
        shutil.rmtree(stale)


def _link_weights_copy_rest(source: str, destination: str):
    """Weight files are hard-linked, so an edited card costs no disk: nothing rewrites a weight file in place. Other
    files are copied, so that an editor writing one in place cannot change another revision."""
    if source.endswith(".safetensors"):
        try:
            os.link(source, destination)
            return
        except OSError:  # a file system without hard links
            pass
    shutil.copy2(source, destination)


def _read_card(card: Path) -> tuple[dict, str]:
    if not card.is_file():
        return {}, "\n"
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---\n") or text.count("---\n") < 2:
        raise PipelineError(f"{card}: the model card has no YAML front matter between '---' lines")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front) or {}, body


def read_metadata(folder: str | os.PathLike) -> dict:
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def list_hub(hub_dir: str | os.PathLike) -> list[dict]:
    rows = []
    for folder in sorted(Path(hub_dir).glob("*")):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        meta = read_metadata(folder)
        size = sum(f.stat().st_size for f in folder.resolve().rglob("*") if f.is_file())
        rows.append(
            {
                "name": folder.name,
                "stage": meta.get("stage", "?"),
                "parent": meta.get("parent") or "-",
                "size_mb": round(size / 2**20, 1),
                "metrics": meta.get("metrics", {}),
                "created": meta.get("created", "?"),
            }
        )
    return rows


def format_metrics(metrics: dict, limit: int = 4) -> str:
    shown = list(metrics.items())[:limit]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown) or "-"


def card_metadata(base_model: str | None, datasets: list[str], recipe_path, metrics: dict, task: str,
                  precision: str | None = None) -> dict:
    meta = {"library_name": "transformers", "tags": ["minichatgpt", "trl"], "pipeline_tag": task}
    if precision:
        meta["training_precision"] = precision
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = list(datasets)
    meta["recipe"] = str(recipe_path)
    meta["model-index"] = [
        {
            "name": "minichatgpt",
            "results": [
                {
                    "task": {"type": task},
                    "metrics": [{"type": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))],
                }
            ],
        }
    ]
    return meta


def main():
    parser = argparse.ArgumentParser(description="List the models in a local minichatgpt hub.")
    parser.add_argument("command", choices=["list"])
    parser.add_argument("--hub_dir", default="hub")
    args = parser.parse_args()
    rows = list_hub(args.hub_dir)
    if not rows:
        print(f"{args.hub_dir}: no models yet")
        return
    print(f"{'name':28} {'stage':10} {'parent':24} {'size':>8}  {'created':25} metrics")
    for row in rows:
        print(
            f"{row['name']:28} {row['stage']:10} {row['parent']:24} {row['size_mb']:>6.1f}MB  {row['created']:25} "
            f"{format_metrics(row['metrics'])}"
        )


if __name__ == "__main__":
    main()
