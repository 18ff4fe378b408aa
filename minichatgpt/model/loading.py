"""Loading models and tokenizers safely: safetensors only, one revision of a hub name, matching vocabularies."""

import os
from pathlib import Path

from minichatgpt.errors import PipelineError


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


def load_for_training(path: str | os.PathLike, model_class, what: str, bf16: bool, **kwargs):
    """The folder of one revision of `path`, and its tokenizer and model, the model with the attention kernel for
    padded batches in `bf16` autocast or not (what every stage after pretraining trains or scores with)."""
    from minichatgpt.model.attention import padded_attention

    folder = revision_folder(path)
    tokenizer = load_tokenizer(folder, f"{what}'s tokenizer")
    model = load_model(folder, model_class, what, tokenizer=tokenizer, attn_implementation=padded_attention(bf16),
                       **kwargs)
    return folder, tokenizer, model
