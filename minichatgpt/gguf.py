"""A chat model as one GGUF file (llama.cpp, Ollama) and an Ollama Modelfile."""

import json
import os
from pathlib import Path

import numpy as np
from transformers import AutoConfig, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from minichatgpt.errors import PipelineError
from minichatgpt.hub import read_metadata
from minichatgpt.model.loading import load_model, load_tokenizer, require_model_folder

try:
    import gguf
except ModuleNotFoundError:  # the `export` extra is not installed; export() says so in one line
    gguf = None

DTYPES = ("f32", "f16")


# The tanh approximation of GELU is what llama.cpp's GPT-2 graph computes; transformers has it under these names.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


# Our template marks assistant turns with transformers' own {% generation %} tag, for SFT's assistant-only loss.
# Other Jinja engines need not know it; without the tags the template renders the same text.
GENERATION_TAGS = ("{% generation %}", "{% endgeneration %}")


MODELFILE = "Modelfile"


def export(model_folder: str | os.PathLike, gguf_path: str | os.PathLike, dtype: str = "f32") -> tuple[Path, Path]:
    """Write the model of `model_folder` as a GGUF file at `gguf_path` and an Ollama Modelfile beside it; returns both
    paths. Each file is written under a temporary name and renamed at the end, so none is ever half written."""
    if gguf is None:
        raise PipelineError('the gguf package is missing; install the export extra: pip install -e ".[export]"')
    if dtype not in DTYPES:
        raise PipelineError(f"unknown dtype '{dtype}'; expected one of {', '.join(DTYPES)}")
    target = Path(gguf_path)
    check_target(target)
    folder = require_model_folder(model_folder, "model")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise PipelineError(f"{folder}: no readable config.json ({str(err).splitlines()[0]})") from None
    check_exportable(config, folder)
    tokenizer = load_tokenizer(folder, "model's tokenizer")
    model = load_model(folder, GPT2LMHeadModel, "model", tokenizer=tokenizer)
    chat = read_metadata(folder).get("stage") != "pretrain" and bool(tokenizer.chat_template)
    name = Path(os.path.abspath(folder)).name
    modelfile = target.with_name(MODELFILE)
    gguf_temporary, modelfile_temporary = temporary_beside(target), temporary_beside(modelfile)
    try:
        write_gguf(gguf_temporary, model, tokenizer, name, chat, dtype)
        modelfile_temporary.write_text(modelfile_text(target.name, model, tokenizer, chat), encoding="utf-8")
        os.replace(gguf_temporary, target)
        os.replace(modelfile_temporary, modelfile)
    except OSError as err:
        raise PipelineError(f"{target}: cannot write the export ({err.strerror or err})") from None
    finally:
        gguf_temporary.unlink(missing_ok=True)
        modelfile_temporary.unlink(missing_ok=True)
    return target, modelfile


def check_target(target: Path):
    if not target.parent.is_dir():
        raise PipelineError(f"{target}: the folder {target.parent} does not exist; create it or pick another path")
    if target.name == MODELFILE:
        raise PipelineError(f"{target}: that is the name of the Modelfile written beside the export; name the GGUF "
                            "file e.g. model.gguf")
    if target.is_dir():
        raise PipelineError(f"{target}: is a folder; name the GGUF file to write, e.g. {target / 'model.gguf'}")


def check_exportable(config, folder: Path):
    """Only what llama.cpp's GPT-2 graph computes: a GPT-2 language model with the standard attention scaling and
    the tanh GELU (a reward model has a score head instead of the language-model head)."""
    if config.model_type != "gpt2" or config.architectures != ["GPT2LMHeadModel"]:
        found = ", ".join(config.architectures or [config.model_type])
        raise PipelineError(f"{folder}: holds a {found}; only GPT-2 language models (GPT2LMHeadModel: the -base, "
                            "-sft and -ppo models) can be exported")
    if config.activation_function not in TANH_GELU:
        raise PipelineError(f"{folder}: activation '{config.activation_function}' is not the tanh GELU that "
                            "llama.cpp's GPT-2 computes")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        raise PipelineError(f"{folder}: attention scaling other than GPT-2's 1/sqrt(head size) is not in GGUF")


def temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_gguf(path: Path, model, tokenizer, name: str, chat: bool, dtype: str):
    config = model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)

    tokens, token_types = gguf_vocabulary(tokenizer, model.get_input_embeddings().weight.shape[0])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(bpe_merges(tokenizer))
    # llama.cpp takes token 11 as BOS and EOS of a "gpt2" vocabulary that names neither.
    if config.bos_token_id is not None:
        writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat:
        template = tokenizer.chat_template
        for tag in GENERATION_TAGS:
            template = template.replace(tag, "")
        writer.add_chat_template(template)

    for gguf_name, array in gguf_tensors(model, dtype):
        writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_vocabulary(tokenizer, rows: int) -> tuple[list[str], list[int]]:
    """One token and type per embedding row, as llama.cpp's converter lists them: the rows the vocabulary was padded
    with get unused placeholders `[PAD<id>]`, so that the token count is the embedding size GGUF readers expect."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, token_types = [], []
    for index in range(rows):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            token_types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in added:
            token_types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            token_types.append(gguf.TokenType.NORMAL)
    return tokens, token_types


def bpe_merges(tokenizer) -> list[str]:
    """The BPE merges as GGUF lists them, "left right"; tokenizer.json spells each as such a string or as a pair."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or (backend.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise PipelineError("only byte-level BPE tokenizers (tokenizer/train.py's) can be exported as a GGUF 'gpt2' "
                            "vocabulary")
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]


def gguf_tensors(model, dtype: str):
    """(GGUF name, array) for every weight. GPT-2's Conv1D layers keep their weights as (in, out), the transpose of
    nn.Linear's: they are written as (out, in), the layout of llama.cpp's converter, which transformers' GGUF reader
    transposes back."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.config.n_layer)
    position_embeddings = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight"
    conv1d_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Conv1D)}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # the token embeddings, which llama.cpp reuses as the output layer when there is none
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise PipelineError(f"tensor {key} has no GGUF name in the GPT-2 architecture")
        array = tensor.detach().float().cpu().numpy()
        if key in conv1d_weights:
            array = np.ascontiguousarray(array.T)
        if dtype == "f16" and array.ndim > 1 and gguf_name != position_embeddings:
            array = array.astype(np.float16)
        yield gguf_name, array


def modelfile_text(gguf_name: str, model, tokenizer, chat: bool) -> str:
    """An Ollama Modelfile: our chat format as a Go template (or the plain prompt for a base model), the end tokens
    as stops, and the decoding defaults of generation_config.json. Its no_repeat_ngram_size has no Ollama setting."""
    generation = model.generation_config
    ends = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    template = ("{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>" if chat
                else "{{ .Prompt }}")
    parameters = {
        "temperature": generation.temperature if generation.do_sample else 0,
        "top_p": generation.top_p,
        "top_k": generation.top_k,
        "repeat_penalty": generation.repetition_penalty,
        "num_predict": generation.max_new_tokens,
        "num_ctx": model.config.n_positions,
    }
    lines = [
        f"# Ollama Modelfile written by `python pipeline/export.py`; load it with: ollama create NAME -f {MODELFILE}",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        *(f'PARAMETER stop "{token}"' for token in tokenizer.convert_ids_to_tokens([e for e in ends if e is not None])),
        *(f"PARAMETER {key} {value:g}" for key, value in parameters.items() if value is not None),
    ]
    return "\n".join(lines) + "\n"
