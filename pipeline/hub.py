"""The local model hub: one folder per pushed model, written atomically, with a model card and older revisions kept.

    python -m pipeline.hub list --hub_dir hub
"""

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import yaml

from pipeline.errors import PipelineError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
METADATA_FILE = "minichatgpt.json"
REVISIONS_DIR = ".revisions"
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers")


def check_name(name: str, what: str = "hub name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise PipelineError(
            f"{what}: '{name}' is not a valid name; use letters, digits, '.', '_' and '-' only (no paths)"
        )
    return name


def hub_path(hub_dir: str | os.PathLike, name: str) -> Path:
    return Path(hub_dir) / check_name(name)


def check_writable(hub_dir: str | os.PathLike, min_free_bytes: int = 50 * 2**20):
    """Fail before training when the hub cannot take a model."""
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
        raise PipelineError(
            f"{hub_dir}: only {free / 2**20:.0f} MiB free on disk, need at least {min_free_bytes / 2**20:.0f} MiB"
        )


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
) -> Path:
    """Write a model with `write(folder)` into a staging folder, then move it into place.

    The version it replaces moves to `{hub_dir}/.revisions/{name}/{timestamp}` and stays loadable; a crash while
    writing leaves only a staging folder, never a half model under `name`.
    """
    target = hub_path(hub_dir, name)
    hub_dir = Path(hub_dir)
    hub_dir.mkdir(parents=True, exist_ok=True)
    staging = hub_dir / f".staging-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
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
        (staging / "README.md").write_text(f"---\n{front}---\n\n{card_body.strip()}\n\nMade with {made_with}.\n",
                                           encoding="utf-8")
        if target.exists():
            revision = hub_dir / REVISIONS_DIR / name / time.strftime("%Y%m%d-%H%M%S")
            revision.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, revision)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_metadata(folder: str | os.PathLike) -> dict:
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def list_hub(hub_dir: str | os.PathLike) -> list[dict]:
    rows = []
    for folder in sorted(Path(hub_dir).glob("*")):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        meta = read_metadata(folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
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


def card_metadata(base_model: str | None, datasets: list[str], recipe_path, metrics: dict, task: str) -> dict:
    meta = {"library_name": "transformers", "tags": ["minichatgpt", "trl"], "pipeline_tag": task}
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
