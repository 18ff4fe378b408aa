"""An interrupted stage: the same settings resume it, other settings are refused, `run.py` starts it fresh."""

import json
import os
import shutil

import pytest
from conftest import launch, run_cli, write_recipe
from test_errors import assert_one_line_error

from minichatgpt.recipe import load_recipe
from minichatgpt.training.checkpoints import CHECKPOINT_FINGERPRINT_FILE, checkpoint_folders, stale_checkpoints

PRETRAIN = {"max_steps": 4, "save_steps": 2}
FINGERPRINT = json.dumps({"pretrain": {"max_steps": 4}})


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A tokenizer and a pretraining run stopped after its first checkpoint (step 2 of 4), which pushed nothing."""
    root = tmp_path_factory.mktemp("interrupted")
    recipe = write_recipe(root / "resume.yaml", root, pretrain=PRETRAIN)
    run_cli(["tokenizer/train.py", "--config", recipe], check=True)
    launch("pipeline/pretrain.py", recipe, check=True)
    shutil.rmtree(root / "runs" / "resume" / "pretrain" / "checkpoint-4")
    (root / "hub" / "resume-base").unlink()  # the name is a link to the pushed revision: the push is undone
    return root


def copy_of(interrupted, tmp_path, **pretrain):
    """The interrupted run under `tmp_path`, with its recipe's pretrain section changed by `pretrain`."""
    for folder in ("hub", "runs"):
        shutil.copytree(interrupted / folder, tmp_path / folder)
    return write_recipe(tmp_path / "resume.yaml", tmp_path, pretrain={**PRETRAIN, **pretrain})


def test_the_same_settings_resume_from_the_last_checkpoint(interrupted, tmp_path):
    recipe = copy_of(interrupted, tmp_path)
    result = launch("pipeline/pretrain.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {tmp_path / 'runs' / 'resume' / 'pretrain' / 'checkpoint-2'}" in result.stdout
    meta = json.loads((tmp_path / "hub" / "resume-base" / "minichatgpt.json").read_text())
    assert meta["metrics"]["tokens_seen"] == 4 * 8 * 128


def test_other_settings_are_refused_in_one_line_and_nothing_is_pushed(interrupted, tmp_path):
    recipe = copy_of(interrupted, tmp_path, learning_rate=5e-4)
    result = run_cli(["pipeline/pretrain.py", "--config", recipe])
    assert_one_line_error(result, str(tmp_path / "runs" / "resume" / "pretrain"), "other settings",
                          "pretrain.learning_rate 0.001 -> 0.0005", "delete that folder")
    assert not (tmp_path / "hub" / "resume-base").exists()


@pytest.mark.slow  # the stages after pretraining run too: about 90 s on 2 cores
def test_run_starts_a_stage_fresh_when_its_checkpoints_have_other_settings(interrupted, tmp_path):
    recipe = copy_of(interrupted, tmp_path, learning_rate=5e-4)
    result = run_cli(["pipeline/run.py", "--config", recipe, "--skip_eval"], timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/5] tokenizer: skipped" in result.stdout
    fresh = [line for line in result.stdout.splitlines() if "[2/5] pretrain: starting fresh" in line]
    assert len(fresh) == 1 and "pretrain.learning_rate 0.001 -> 0.0005" in fresh[0], result.stdout[-3000:]
    assert "resuming from" not in result.stdout
    meta = json.loads((tmp_path / "hub" / "resume-base" / "minichatgpt.json").read_text())
    assert meta["fingerprint"] == load_recipe(recipe).fingerprint("pretrain")
    assert "[5/5] ppo: done" in result.stdout


def test_a_checkpoint_cut_short_while_saving_is_removed_and_the_last_complete_one_resumed(interrupted, tmp_path):
    recipe = copy_of(interrupted, tmp_path)
    checkpoints = tmp_path / "runs" / "resume" / "pretrain"
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / "checkpoint-3")
    state = checkpoints / "checkpoint-3" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # the disk filled up while the Trainer wrote its last file
    result = launch("pipeline/pretrain.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{checkpoints / 'checkpoint-3'} removed: cut short while saving" in result.stdout
    assert f"resuming from {checkpoints / 'checkpoint-2'}" in result.stdout
    meta = json.loads((tmp_path / "hub" / "resume-base" / "minichatgpt.json").read_text())
    assert meta["metrics"]["tokens_seen"] == 4 * 8 * 128


def test_only_checkpoints_with_a_readable_trainer_state_count_as_complete(tmp_path):
    for step, state in ((2, "{}"), (3, None), (4, '{"global_st'), (10, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert checkpoint_folders(str(tmp_path)) == (str(tmp_path / "checkpoint-2"),
                                                 [str(tmp_path / f"checkpoint-{s}") for s in (10, 4, 3)])
    assert checkpoint_folders(str(tmp_path / "missing")) == (None, [])


def test_checkpoints_started_before_a_model_they_build_on_was_pushed_are_stale(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / CHECKPOINT_FINGERPRINT_FILE).write_text(FINGERPRINT)
    os.utime(tmp_path / CHECKPOINT_FINGERPRINT_FILE, (0, 0))
    assert stale_checkpoints(tmp_path, FINGERPRINT) is None
    assert stale_checkpoints(tmp_path, FINGERPRINT, "1970-01-01T00:00:00+00:00") is None
    assert "before a model it builds on was pushed" in stale_checkpoints(tmp_path, FINGERPRINT,
                                                                         "2026-12-07T10:00:00+00:00")


@pytest.mark.slow  # the stages after pretraining run too: about 90 s on 2 cores
def test_run_resumes_checkpoints_of_its_settings_whatever_older_model_the_hub_holds(interrupted, tmp_path):
    recipe = copy_of(interrupted, tmp_path)
    older = tmp_path / "hub" / "resume-base"
    older.mkdir()
    (older / "minichatgpt.json").write_text(json.dumps({"fingerprint": "{}", "created": "2026-01-01T00:00:00+00:00"}))
    result = run_cli(["pipeline/run.py", "--config", recipe, "--skip_eval"], timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting fresh" not in result.stdout
    assert f"resuming from {tmp_path / 'runs' / 'resume' / 'pretrain' / 'checkpoint-2'}" in result.stdout
    meta = json.loads((older / "minichatgpt.json").read_text())
    assert meta["metrics"]["tokens_seen"] == 4 * 8 * 128


def test_a_disk_that_fills_during_a_checkpoint_save_gets_one_line_that_says_so(interrupted, tmp_path, small_disk):
    recipe = copy_of(interrupted, tmp_path)
    write_recipe(recipe, tmp_path, pretrain=PRETRAIN, output_root=str(small_disk))
    result = launch("pipeline/pretrain.py", recipe)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: the disk of {small_disk} is full (") and "free space and run the same command" in line
    assert not (tmp_path / "hub" / "resume-base").exists()
