import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.sources import CORNELL_SEPARATOR

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
WIKITEXT = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
CORNELL = SHARED_DATA / "cornell-movie-dialogs-sample"


def run_cli(args, cwd=ROOT, timeout=600, check=False, env=None):
    """Run one of the project's commands as a user would, returning the completed process."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def launch(script, recipe, *overrides, processes=1, **kwargs):
    """`accelerate launch` a stage script with the repo's accelerate config (or 2 CPU processes)."""
    if processes > 1:
        head = ["-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", str(processes)]
    else:
        head = ["-m", "accelerate.commands.launch", "--quiet", "--config_file", ROOT / "accelerate_config.yaml"]
    return run_cli([*head, ROOT / script, "--config", recipe, *overrides], **kwargs)


def write_recipe(path: Path, tmp_root: Path, **changes) -> Path:
    """The smoke recipe with its hub and checkpoints under `tmp_root` and sections changed by `changes`."""
    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    recipe["hub_dir"] = str(tmp_root / "hub")
    recipe["output_root"] = str(tmp_root / "runs")
    recipe["run_name"] = path.stem
    for section, values in changes.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    path.write_text(yaml.safe_dump(recipe))
    return path


def seed_hub(smoke_run, tmp_path: Path, run_name: str, *stages: str):
    """Copy the smoke run's finished `stages` into tmp_path/hub under `run_name`; by default what an RL stage reads:
    the tokenizer, base, SFT and reward models."""
    for stage in stages or ("tokenizer", "base", "sft", "reward"):
        shutil.copytree(smoke_run["hub"] / f"smoke-{stage}", tmp_path / "hub" / f"{run_name}-{stage}")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke chain, run once through `pipeline/run.py` as the README says."""
    root = tmp_path_factory.mktemp("smoke")
    recipe = write_recipe(root / "smoke.yaml", root)
    result = run_cli(["pipeline/run.py", "--config", recipe], check=True, timeout=1200)
    return {"root": root, "recipe": recipe, "hub": root / "hub", "runs": root / "runs", "log": result.stdout}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_cornell(folder, lines, conversations, encoding="iso-8859-1", newline="\n"):
    """A Cornell-format folder: `lines` as (line id, speaker, text), `conversations` as lists of line ids."""
    folder.mkdir(exist_ok=True)
    rows = [CORNELL_SEPARATOR.join([line_id, speaker, "m0", speaker.upper(), text]) for line_id, speaker, text in lines]
    (folder / "movie_lines.txt").write_bytes(newline.join(rows + [""]).encode(encoding))
    rows = [CORNELL_SEPARATOR.join(["u0", "u1", "m0", repr(ids)]) for ids in conversations]
    (folder / "movie_conversations.txt").write_bytes(newline.join(rows + [""]).encode(encoding))
    return folder


def most_lines_missing(folder: Path) -> Path:
    """100 two-line conversations of which only 6 have their lines in movie_lines.txt."""
    lines = [(f"L{i}", f"u{i % 2}", f"line {i}") for i in range(12)]
    return write_cornell(folder, lines, [[f"L{2 * c}", f"L{2 * c + 1}"] for c in range(100)])
