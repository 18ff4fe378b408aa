"""`report_to: [trackio]` logs a stage's training offline, as a run of a local trackio project named after the
recipe's run; trackio stays off unless a recipe asks for it."""

import json
import math

from conftest import launch, run_cli, write_recipe

from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults

# trackio's own reader, in a fresh process: it fixes its folder (TRACKIO_DIR) when it is imported.
READ_RUNS = """
import json, sys
from trackio import Api
from trackio.sqlite_storage import SQLiteStorage

project = sys.argv[1]
print(json.dumps({run.name: SQLiteStorage.get_logs(project, run.name) for run in Api().runs(project)}, default=str))
"""


def test_a_stage_is_a_run_of_the_recipe_project_and_trackio_is_off_unless_asked(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "tracked.yaml", tmp_path, sft={"report_to": ["trackio"]}))
    _, training = recipe.parse("pretrain", defaults=trainer_defaults())
    assert (training.project, training.run_name) == ("tracked", "pretrain")
    assert "trackio" not in training.report_to
    _, sft, _ = recipe.parse("sft", defaults=trainer_defaults())
    assert (sft.project, sft.run_name, sft.report_to) == ("tracked", "sft", ["trackio"])
    _, sft, _ = recipe.parse("sft", ["--project", "mine", "--run_name", "try-2"], defaults=trainer_defaults())
    assert (sft.project, sft.run_name) == ("mine", "try-2")


def test_pretraining_logs_its_loss_to_a_local_trackio_project(tmp_path):
    env = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    recipe = write_recipe(tmp_path / "tracked.yaml", tmp_path, pretrain={
        "max_steps": 3, "logging_steps": 1, "eval_steps": 3, "save_strategy": "no", "report_to": ["trackio"]})
    run_cli(["tokenizer/train.py", "--config", recipe], check=True)
    result = launch("pipeline/pretrain.py", recipe, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"* Trackio metrics logged to: {tmp_path / 'trackio'}" in result.stdout
    runs = json.loads(run_cli(["-c", READ_RUNS, "tracked"], check=True, env=env).stdout)
    assert list(runs) == ["pretrain"]
    losses = [row["train/loss"] for row in runs["pretrain"] if "train/loss" in row]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert any("eval/loss" in row for row in runs["pretrain"])
