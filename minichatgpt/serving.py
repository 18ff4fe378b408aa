"""Which models the web app serves (folders under the hub or named on its command line, nothing else) and the bounded
cache it loads them into."""

import functools
import os
from pathlib import Path

from transformers import AutoModelForCausalLM

from minichatgpt.errors import PipelineError
from minichatgpt.hub import list_hub, read_metadata
from minichatgpt.model.loading import load_model, load_tokenizer, revision_folder

# Models kept loaded, each shared by every session (generation does not change them): enough for an arena of a run's
# policies, bounded so that loading one model after another does not hold them all.
LOADED_MODELS = 8


def load_chat_model(folder: str | os.PathLike):
    """The chat model and tokenizer of `folder`'s revision now; every spelling of a folder is one cache entry."""
    return _load_revision(str(revision_folder(folder)))


def served_folder(text: str, hub_dir: str | os.PathLike, named: list[str]) -> Path:
    """The model folder a browser asks for, if the page serves it: a model of the hub folder (by its name, or as
    hub_dir/name) or a folder named on the command line. Anything else gets one message that names what is served
    and tells nothing of the server's disk."""
    choices = {os.path.normpath(folder): Path(folder) for folder in named}
    for row in list_hub(hub_dir) if Path(hub_dir).is_dir() else ():
        folder = Path(hub_dir) / row["name"]
        choices[row["name"]] = choices[os.path.normpath(folder)] = folder
    wanted = text.strip()
    if not wanted or os.path.normpath(wanted) not in choices:
        served = sorted({str(folder) for folder in choices.values()})
        raise PipelineError(f"'{wanted}' is not a model this page serves; load one of: {', '.join(served)}")
    return choices[os.path.normpath(wanted)]


@functools.lru_cache(maxsize=LOADED_MODELS)
def _load_revision(folder: str):
    tokenizer = load_tokenizer(folder, "model's tokenizer")
    stage = read_metadata(folder).get("stage")
    if stage in ("pretrain", "reward") or not tokenizer.chat_template:
        raise PipelineError(f"{folder}: not a chat model (stage {stage or 'unknown'}, chat template "
                            f"{'present' if tokenizer.chat_template else 'missing'}); use an -sft or -ppo model")
    return load_model(folder, AutoModelForCausalLM, "model", tokenizer=tokenizer).eval(), tokenizer
