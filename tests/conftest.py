import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke chain, run once through `pipeline/run.py` as the README says."""
    root = tmp_path_factory.mktemp("smoke")
    recipe = write_recipe(root / "smoke.yaml", root)
    result = run_cli(["pipeline/run.py", "--config", recipe], check=True, timeout=1200)
    return {"root": root, "recipe": recipe, "hub": root / "hub", "runs": root / "runs", "log": result.stdout}
