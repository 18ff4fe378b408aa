"""A fault campaign: kill the chain with SIGKILL at random moments, inside a checkpoint save and inside a push, or
fill its disk, then run the README's command again, and count what was resumed and what was lost.

    python bench/faults.py                                      # 4 kills of each kind on the smoke recipe
    python bench/faults.py --kills 8 --kinds random save --json faults.json
    python bench/faults.py --kinds disk_full                    # root: a tmpfs filled during each stage

Every run works in its own folder under --work: a copy of the recipe (its hub and checkpoints there, the reward
stage on built pairs, so that no labeler model is loaded, and no evaluation). First one uninterrupted run, the
reference; then, per fault, `pipeline/run.py --skip_eval` is started, killed (with its whole process group) or starved
of space, and started again until it finishes. A fault is lost when the second run fails, a model of the hub does
not load, the logged (step, learning rate) pairs of pretraining or SFT differ from the reference's (a stage that
resumed must continue its schedule where the last complete checkpoint left it), or a stage killed with a complete
checkpoint, before its push, did not resume from it. Kinds:
- random: at a moment drawn uniformly over the reference run's duration;
- save: while the run's n-th checkpoint (n drawn among its 4) has no trainer_state.json yet (the Trainer writes it
  last);
- push: while the run's n-th push (n drawn among its 5) has a staging folder in the hub (a model being written
  before its name points at it);
- disk_full (root): the run's folder on a tmpfs of its own, filled by another file while a stage runs (one fault for
  each of --disk_stages, after pretraining's and SFT's first checkpoint); it must fail with one line and leave no
  model half-written at a hub name, and the second run, with the file removed, must finish.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("tokenizer", "base", "sft", "reward", "ppo")
SCHEDULED = ("base", "sft")  # the stages that resume from checkpoints, whose schedules must match the reference's
# What a run of the smoke recipe writes: checkpoints (pretraining and SFT save 2 each) and pushes (one per stage).
WRITES = {"random": 1, "save": 4, "push": 5}
DISK_LEFT = 256 * 2**10  # what the filler leaves free: less than a checkpoint or a model of the smoke recipe


def write_recipe(recipe: Path, folder: Path) -> Path:
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    raw.update(run_name="faults", hub_dir=str(folder / "hub"), output_root=str(folder / "runs"))
    raw.setdefault("reward", {})["labeler"] = "built"
    raw.pop("dpo", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def start(recipe: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "pipeline" / "run.py"), "--config", str(recipe), "--skip_eval"]
    return subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def run_to_end(recipe: Path, log: Path) -> tuple[int, float]:
    begin = time.time()
    process = start(recipe, log)
    return process.wait(), time.time() - begin


def schedules(hub: Path) -> dict:
    """The logged (step, learning rate) pairs of the stages that resume from checkpoints."""
    found = {}
    for stage in SCHEDULED:
        meta = hub / f"faults-{stage}" / "minichatgpt.json"
        history = json.loads(meta.read_text(encoding="utf-8"))["log_history"] if meta.is_file() else []
        found[stage] = [(row["step"], round(row["learning_rate"], 12)) for row in history if "learning_rate" in row]
    return found


def models_load(hub: Path) -> str | None:
    """None when every model of the run loads; else what did not."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for stage in STAGES:
        folder = hub / f"faults-{stage}"
        try:
            if stage == "tokenizer":
                AutoTokenizer.from_pretrained(folder)
            elif stage == "reward":
                AutoModelForSequenceClassification.from_pretrained(folder)
            else:
                AutoModelForCausalLM.from_pretrained(folder)
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            return f"{folder}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def running_stage(log: Path) -> str:
    started = [line.split("]")[1].split(":")[0].strip() for line in log.read_text(errors="replace").splitlines()
               if line.startswith("[") and ": starting" in line]
    return started[-1] if started else "before the first stage"


def kill_when(process: subprocess.Popen, folder: Path, kind: str, delay: float, nth: int) -> bool:
    """Kill the run's process group at the moment `kind` names (for save and push: while the `nth` checkpoint or
    push of the run is being written); False when the run ended first."""
    deadline, seen = time.time() + delay, set()
    while process.poll() is None:
        if kind == "random" and time.time() >= deadline:
            break
        writing = ([c for c in (folder / "runs" / "faults").glob("*/checkpoint-*")
                    if not (c / "trainer_state.json").exists()] if kind == "save"
                   else list((folder / "hub").glob(".staging-*")) if kind == "push" else [])
        seen.update(writing)
        if writing and len(seen) >= nth:
            break
        time.sleep(0.005)
    if process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def half_written(hub: Path) -> list[str]:
    """Hub names whose folder lacks its metadata: what a push must never leave."""
    return [p.name for p in hub.glob("faults-*") if not (p / "minichatgpt.json").is_file()] if hub.is_dir() else []


def disk_full(recipe: Path, folder: Path, stage: str, expected: dict) -> dict:
    """The run on a tmpfs of its own that another file fills, leaving `DISK_LEFT` bytes, once `stage` has saved its
    first checkpoint (or, for a stage that saves none, once it starts): the run must fail with one line and leave no
    model half-written at a hub name; with the file removed, the same command must finish as the reference did."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        return {"fault": "disk_full", "result": f"skipped: cannot mount a tmpfs ({mounted.stderr.strip()})"}
    try:
        path = write_recipe(recipe, folder)
        process = start(path, folder / "first.log")
        checkpoints = folder / "runs" / "faults" / stage
        while process.poll() is None:
            started = f"] {stage}: starting" in (folder / "first.log").read_text(errors="replace")
            saved = any(checkpoints.glob("checkpoint-*/trainer_state.json"))
            if started and (stage not in ("pretrain", "sft") or saved):
                filler = folder / "filler"
                filler.write_bytes(b"\0" * max(0, shutil.disk_usage(folder).free - DISK_LEFT))
                break
            time.sleep(0.005)
        first = process.wait()
        errors = [line for line in (folder / "first.log").read_text(errors="replace").splitlines()
                  if line.startswith("error: ")]
        broken = half_written(folder / "hub")
        (folder / "filler").unlink(missing_ok=True)
        second, _ = run_to_end(path, folder / "second.log")
        problem = (f"second run exit {second}" if second else models_load(folder / "hub")
                   or ("schedule differs from the reference" if schedules(folder / "hub") != expected else None))
        lost = problem or first == 0 or broken or len(errors) != 1
        return {"fault": "disk_full", "killed_in": running_stage(folder / "first.log"), "first_exit": first,
                "error_line": errors[0] if errors else None, "half_written": broken, "problem": problem,
                "result": "lost" if lost else "resumed" if "resuming from" in (folder / "second.log").read_text()
                else "restarted"}
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/smoke.yaml",
                        help="the recipe to break (its sections, not its hub)")
    parser.add_argument("--kills", type=int, default=4, help="faults of each kind")
    parser.add_argument("--kinds", nargs="+", choices=("random", "save", "push", "disk_full"),
                        default=["random", "save", "push"], help="how to break the run")
    parser.add_argument("--disk_stages", nargs="+", default=["pretrain", "sft", "reward", "ppo"],
                        help="disk_full: the stages during which the disk fills, one fault each")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    parser.add_argument("--work", default=None, help="where the runs go (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="faults-"))
    draw = random.Random(args.seed)
    reference = work / "reference"
    code, duration = run_to_end(write_recipe(ROOT / args.recipe, reference), work / "reference.log")
    if code:
        sys.exit(f"the uninterrupted reference run failed (exit {code}); see {work / 'reference.log'}")
    expected = schedules(reference / "hub")
    print(f"reference run: {duration:.0f}s", flush=True)
    rows = []
    for kind in args.kinds:
        for index in range(args.kills):
            folder = work / f"{kind}-{index}"
            if kind == "disk_full":
                if index < len(args.disk_stages):
                    rows.append(disk_full(ROOT / args.recipe, folder, args.disk_stages[index], expected))
                    print(rows[-1], flush=True)
                continue
            path = write_recipe(ROOT / args.recipe, folder)
            delay = draw.uniform(0, duration)
            process = start(path, folder / "first.log")
            killed = kill_when(process, folder, kind, delay, nth=draw.randint(1, WRITES[kind]))
            stage = running_stage(folder / "first.log")
            # A stage that resumes from checkpoints must resume when it had saved a complete one.
            resumable = any((folder / "runs" / "faults" / stage).glob("checkpoint-*/trainer_state.json"))
            second, _ = run_to_end(path, folder / "second.log")
            log = (folder / "second.log").read_text(errors="replace")
            # Killed after its push, the stage is done: the second run skips it.
            pushed = f"] {stage}: skipped" in log
            problem = (f"second run exit {second}" if second else models_load(folder / "hub")
                       or ("schedule differs from the reference" if schedules(folder / "hub") != expected else None)
                       or ("a complete checkpoint was not resumed"
                           if resumable and not pushed and "resuming from" not in log else None))
            result = ("lost" if problem else "not killed (the run ended first)" if not killed
                      else "already pushed" if pushed else "resumed" if "resuming from" in log else "restarted")
            rows.append({"fault": kind, "at_seconds": round(delay, 1) if kind == "random" else None,
                         "killed_in": stage, "result": result, "problem": problem})
            print(rows[-1], flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    outcomes = ("resumed", "restarted", "already pushed", "lost")
    print("\n| fault | tried | killed | resumed from a checkpoint | stage restarted | stage already pushed | lost |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        mine = [r for r in rows if r["fault"] == kind]
        count = {name: sum(r["result"] == name for r in mine) for name in outcomes}
        hit = len(mine) - sum(r["result"].startswith(("not killed", "skipped")) for r in mine)
        print(f"| {kind} | {len(mine)} | {hit} | " + " | ".join(str(count[name]) for name in outcomes) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
