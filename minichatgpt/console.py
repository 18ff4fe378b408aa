"""The command line every stage script shares: a recipe, overrides, and failures as one line and an exit code."""

import argparse
import errno
import logging
import os
import shutil
import sys
from pathlib import Path

from minichatgpt.errors import PipelineError
from minichatgpt.recipe import load_recipe


def run_stage(main, description: str):
    """Parse `--config` (+ `--debug`), run `main(recipe, overrides)`, and turn failures into one line + exit code."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--config", required=True, help="recipe YAML file, e.g. recipes/smoke.yaml")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    known, overrides = parser.parse_known_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    use_cpu_cores()
    recipe = None
    try:
        recipe = load_recipe(known.config)
        main(recipe, overrides)
    except PipelineError as err:
        if known.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; start the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - one line unless --debug, as for input errors
        if known.debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        full = full_disk(recipe)
        if full or getattr(err, "errno", None) == errno.ENOSPC:
            print(f"error: the disk{f' of {full}' if full else ''} is full ({type(err).__name__}: {first}); free "
                  "space and run the same command again: pretraining and SFT resume from their last complete "
                  "checkpoint", file=sys.stderr)
        else:
            print(f"error: {type(err).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


def full_disk(recipe) -> str | None:
    """The run's checkpoint or hub folder whose disk has (almost) no space left: what a failed save means, whichever
    error the writer raised (safetensors and torch.save report a full disk in words of their own)."""
    for folder in (recipe.run.output_root, recipe.run.hub_dir) if recipe is not None else ():
        if Path(folder).is_dir() and shutil.disk_usage(folder).free < 2**20:
            return str(folder)
    return None


def use_cpu_cores():
    """Without an accelerator, give each process its share of the physical cores: `accelerate launch` pins a
    single CPU process to one thread (OMP_NUM_THREADS=1), which halves training speed on a 2-core machine."""
    import psutil
    import torch

    if not torch.accelerator.is_available():
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = int(os.environ.get("MINICHATGPT_CPU_THREADS", "0"))  # to run jobs side by side without oversubscribing
        torch.set_num_threads(threads or max(1, (psutil.cpu_count(logical=False) or 1) // processes))


def print_per_process(message: str) -> None:
    """Print one line, prefixed with the process's rank under several processes, in a single write so that the
    processes' lines never interleave on a shared, unbuffered stdout."""
    from accelerate import PartialState

    state = PartialState()
    rank = f"rank {state.process_index}/{state.num_processes} " if state.num_processes > 1 else ""
    sys.stdout.write(f"{rank}{message}\n")
    sys.stdout.flush()
