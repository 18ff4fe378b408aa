"""What every stage script shares: the command line, error reporting, logging, loading models safely."""

import argparse
import errno
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.config import load_recipe  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

logger = logging.getLogger("minichatgpt")


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


def revision_folder(path: str | os.PathLike) -> str | os.PathLike:
    """The folder a path resolves to now: for a hub name, the revision its link points at (a path that does not
    exist, or a hub id, as it is). Every file of one model is loaded from it, so that a push meanwhile cannot pair one
    revision's tokenizer or config with another's weights; every spelling of one folder resolves alike."""
    return Path(os.path.realpath(path)) if Path(path).exists() else path


def require_model_folder(path: str | os.PathLike, what: str) -> Path:
    """A model folder we may load: it exists and holds safetensors weights (pickle weights are refused)."""
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: {what} not found; run the stage that makes it first (or fix the path)")
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        if pickles:
            raise PipelineError(f"{folder}: only pickle weights ({', '.join(pickles)}); minichatgpt loads safetensors "
                                "only, convert with `model.save_pretrained(folder, safe_serialization=True)`")
        raise PipelineError(f"{folder}: {what} has no weights (*.safetensors)")
    return folder


def load_tokenizer(path: str | os.PathLike, what: str = "tokenizer"):
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: folder not found; run the stage that makes it first (or fix the path)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise PipelineError(f"{folder}: {what} not found; run `python tokenizer/train.py --config <recipe>` first")
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def load_model(path: str | os.PathLike, model_class, what: str, tokenizer=None, **kwargs):
    folder = require_model_folder(path, what)
    model = model_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=False, **kwargs)
    if tokenizer is not None:
        check_vocab(model, tokenizer, folder)
    return model


def check_vocab(model, tokenizer, folder):
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise PipelineError(
            f"{folder}: the model has {embeddings} token embeddings but the tokenizer has {len(tokenizer)} tokens; "
            "they come from different runs, use the tokenizer the model was trained with"
        )


def print_per_process(message: str) -> None:
    """Print one line, prefixed with the process's rank under several processes, in a single write so that the
    processes' lines never interleave on a shared, unbuffered stdout."""
    from accelerate import PartialState

    state = PartialState()
    rank = f"rank {state.process_index}/{state.num_processes} " if state.num_processes > 1 else ""
    sys.stdout.write(f"{rank}{message}\n")
    sys.stdout.flush()


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 50 else float("inf")


def native_bf16() -> bool:
    """Whether this machine computes in bf16 natively: a CUDA GPU that supports it, or, without an accelerator, a CPU
    with bf16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16), which oneDNN runs matmuls on at 2-3x the fp32 rate.
    Elsewhere bf16 autocast is emulated and slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if torch.accelerator.is_available():
        return False
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def precision_label(training_args) -> str:
    """How a stage computed, for its model card; the weights it trains and pushes are fp32 whichever it is."""
    if training_args.bf16:
        return "bf16 autocast"
    return "fp16 autocast" if training_args.fp16 else "fp32"


def trainer_defaults(**stage_defaults) -> dict:
    """Training settings that depend on the machine: bf16 autocast where it is native (GPU or CPU), CPU mode without
    an accelerator, TensorBoard when installed."""
    import importlib.util

    import torch

    defaults = dict(stage_defaults)
    defaults.setdefault("bf16", native_bf16())
    # Without an accelerator, Trainer only runs several processes as DDP (gloo) when told it is on the CPU.
    defaults.setdefault("use_cpu", not torch.accelerator.is_available())
    defaults.setdefault("ddp_find_unused_parameters", False)
    # Activation checkpointing off, under its current name. TRL's configs default to the deprecated alias
    # `gradient_checkpointing=True`, which made every SFT, reward and RL run print transformers' FutureWarning and
    # recompute each block's forward pass during backward: for models of a few million parameters (124M at most in
    # the shipped recipes) the saved activations are small, so checkpointing only costs time. A recipe that needs the
    # memory sets `activation_checkpointing: true` (or the old `gradient_checkpointing: true`; see Recipe.parse).
    defaults.setdefault("activation_checkpointing", False)
    if importlib.util.find_spec("tensorboard") is not None:
        defaults.setdefault("report_to", ["tensorboard"])
    return defaults


def plot_curves(log_history: list[dict], series: dict[str, str], path: Path, title: str) -> Path | None:
    """Plot logged values (`series` maps a log key to its label) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for key, label in series.items():
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def last_logged(log_history: list[dict], key: str, default: float | None = None) -> float | None:
    """The last value a trainer logged under `key`, or `default` when it logged none."""
    values = [row[key] for row in log_history if key in row]
    return values[-1] if values else default


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


def metrics_table(metrics: dict) -> str:
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def fit_context(recipe, section: str, max_length: int | None, context: int) -> int:
    """The sequence length to train with: the model's context unless the recipe asks for less; asking for more than
    the model has positions for is an error."""
    asked = (recipe.sections.get(section) or {}).get("max_length")
    if asked is not None and asked > context:
        raise PipelineError(f"{recipe.path}: {section}.max_length={asked} is above the model's {context} positions "
                            f"(model.n_positions); use at most {context}")
    return context if max_length is None or max_length > context else max_length
