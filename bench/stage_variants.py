"""What the settings benchmarks share: a copy of a run's recipe that writes to the benchmark's own hub, one stage
trained on it with the stage's own script once per variant of its settings, and differences paired item by item."""

import json
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from minichatgpt.errors import PipelineError
from minichatgpt.evaluation.stats import standard_error

ROOT = Path(__file__).resolve().parent.parent


def variant_recipe(recipe, work: Path, name: str, linked_stages: tuple[str, ...] = (),
                   copied_outputs: tuple[str, ...] = ()) -> Path:
    """A copy of the recipe named `name` whose hub is {work}/hub, the run's models of `linked_stages` linked in under
    that name, so that the run's own hub is never written, and the run's output folders `copied_outputs` (the
    comparisons, say) copied into its run folder, so that a variant that remakes them leaves the run's alone."""
    hub = work / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    for stage in linked_stages:
        link = hub / f"{name}-{stage}"
        if not link.exists():
            # To the run's name, not the revision it points at: that one is pruned after a few more pushes.
            link.symlink_to(recipe.hub_path(stage).parent.resolve() / recipe.hub_name(stage), target_is_directory=True)
    raw = yaml.safe_load(recipe.path.read_text(encoding="utf-8"))
    raw.update(run_name=name, hub_dir=str(hub), output_root=str(work / "runs"))
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    # A checkpoint left by an earlier benchmark would make the stage resume (or refuse other settings).
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    for output in copied_outputs:
        if Path(recipe.output_dir(output)).is_dir():
            shutil.copytree(recipe.output_dir(output), work / "runs" / name / output)
    return path


def run_stage_script(stage: str, recipe_path: Path, arguments: list[str], label: str) -> None:
    """`pipeline/{stage}.py --config recipe_path arguments`; a failure is a PipelineError naming `label`."""
    command = [sys.executable, str(ROOT / "pipeline" / f"{stage}.py"), "--config", str(recipe_path), *arguments]
    print("$ " + shlex.join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"{label} failed:\n{result.stderr.strip()[-2000:]}")


def train_variants(recipe, stage: str, variants: list[str], score, linked_stages: tuple[str, ...] = (),
                   arguments: tuple[str, ...] = (), copied_outputs: tuple[str, ...] = ()) -> list[dict]:
    """Train `stage` once per variant (a quoted string of overrides; "" is the recipe's own settings) on a copy of the
    recipe named {run}-{stage}{i} whose hub is {output_root}/{run}/{stage}_settings/hub, and score each model with
    `score(folder)`; one row per variant: its overrides, the stage's training seconds and the scores."""
    work = Path(recipe.output_dir(f"{stage}_settings")).resolve()
    rows = []
    for index, variant in enumerate(variants):
        name = f"{recipe.run_name}-{stage}{index}"
        path = variant_recipe(recipe, work, name, linked_stages, copied_outputs)
        run_stage_script(stage, path, [*arguments, *shlex.split(variant)],
                         f"variant {index} ({variant or 'the recipe'})")
        folder = work / "hub" / f"{name}-{stage}"
        metrics = json.loads((folder / "minichatgpt.json").read_text(encoding="utf-8"))["metrics"]
        rows.append({"variant": variant or "the recipe", "train_seconds": metrics["wall_seconds"], **score(folder)})
    return rows


def paired(values: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean difference and its standard error, item by item."""
    differences = [v - r for v, r in zip(values, reference)]
    return statistics.fmean(differences), standard_error(differences)
