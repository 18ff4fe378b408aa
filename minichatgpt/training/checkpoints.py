"""Resuming a stage: which checkpoint is complete, and whether it was made with the current settings."""

import json
import os
import shutil
from pathlib import Path

from minichatgpt.errors import PipelineError


def checkpoint_folders(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint in `output_dir` (or None), and the newer ones a kill or a full disk cut short
    while saving: the Trainer writes trainer_state.json last, so a checkpoint without a readable one is incomplete."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(output_dir)
    steps = {}
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else ():
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if step.isdigit() and path.is_dir():
            steps[int(step)] = path
    incomplete = []
    for step in sorted(steps, reverse=True):
        try:
            json.loads((steps[step] / "trainer_state.json").read_text(encoding="utf-8"))
            return str(steps[step]), incomplete
        except (OSError, ValueError):
            incomplete.append(str(steps[step]))
    return None, incomplete


def last_checkpoint(output_dir: str) -> str | None:
    return checkpoint_folders(output_dir)[0]


# Beside a stage's checkpoints: the recipe fingerprint (`Recipe.fingerprint`) of the run that made them.
CHECKPOINT_FINGERPRINT_FILE = "minichatgpt-fingerprint.json"


def stale_checkpoints(output_dir: str | os.PathLike, fingerprint: str, inputs_created: str = "") -> str | None:
    """Why the checkpoints in `output_dir` must not be resumed by a run with `fingerprint`, naming the settings that
    differ, or because they were started before `inputs_created` (the ISO time the newest model they build on was
    pushed); None when there are none or they were made with the same settings from the same inputs."""
    from datetime import datetime, timezone

    if last_checkpoint(str(output_dir)) is None:
        return None
    recorded = Path(output_dir) / CHECKPOINT_FINGERPRINT_FILE
    if not recorded.is_file():
        return "its checkpoints do not record the settings they were made with"
    started = datetime.fromtimestamp(recorded.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    if started < inputs_created:
        return f"its checkpoints were started ({started}) before a model it builds on was pushed ({inputs_created})"
    changed = changed_settings(recorded.read_text(encoding="utf-8"), fingerprint)
    return f"its checkpoints were made with other settings ({changed})" if changed else None


def changed_settings(recorded: str, current: str, shown: int = 3) -> str:
    """The settings that differ between two fingerprints, as `section.key old -> new` (the first `shown` of them);
    empty when they are the same."""

    def flat(value, prefix: str = "") -> dict:
        if not isinstance(value, dict):
            return {prefix: value}
        return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}.{key}" if prefix else key).items()}

    # A section left empty ({}) and one left out (None) hold the same settings.
    before = {k.removeprefix("shared."): v for k, v in flat(json.loads(recorded)).items() if v is not None}
    after = {k.removeprefix("shared."): v for k, v in flat(json.loads(current)).items() if v is not None}
    changed = [f"{key} {before.get(key, 'unset')} -> {after.get(key, 'unset')}"
               for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return ", ".join(changed[:shown]) + more


def resume_checkpoint(training_args, fingerprint: str) -> str | None:
    """The last checkpoint of `training_args.output_dir` to resume from, or None to start fresh; refuses checkpoints
    made with other settings, which would be finished under these settings and stamped with their fingerprint, and
    removes newer checkpoints that were cut short while saving. A fresh start records `fingerprint` beside the
    checkpoints it will write."""
    output_dir = Path(training_args.output_dir)
    stale = stale_checkpoints(output_dir, fingerprint)
    if stale:
        raise PipelineError(f"{output_dir}: {stale}; delete that folder to start this stage fresh, or undo the "
                            "change to resume")
    checkpoint, incomplete = checkpoint_folders(str(output_dir))
    for folder in incomplete:
        if training_args.should_save:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"{folder} removed: cut short while saving (no readable trainer_state.json)")
    if checkpoint:
        print(f"resuming from {checkpoint}")
    elif training_args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CHECKPOINT_FINGERPRINT_FILE).write_text(fingerprint, encoding="utf-8")
    return checkpoint
