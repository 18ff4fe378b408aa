"""Export a model of the hub to one GGUF file, for llama.cpp, Ollama and the other GGUF runtimes, with an Ollama
Modelfile beside it.

    python pipeline/export.py hub/quickstart-ppo --gguf quickstart.gguf [--dtype f16]

The file holds what llama.cpp's own GPT-2 converter (convert_hf_to_gguf.py) writes: the GPT-2 tensors under their
GGUF names, the byte-level BPE tokenizer (tokens, merges, token types, special token ids) and, for a chat model, the
chat template. The Modelfile next to it (`ollama create NAME -f Modelfile`) renders our chat format and carries the
model's decoding defaults from generation_config.json. See docs/export.md.
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from minichatgpt.errors import PipelineError
from minichatgpt.gguf import DTYPES, export


@dataclass
class ExportArguments:
    gguf: str = field(metadata={"help": "GGUF file to write, e.g. quickstart.gguf, in an existing folder; an Ollama "
                                "Modelfile is written beside it (one folder per exported model)."})
    dtype: str = field(default="f32", metadata={
        "help": "f32, or f16 for half the size; 1-D tensors and the position embeddings stay f32, as llama.cpp's "
                "converter keeps them.", "choices": DTYPES})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks."})


def main():
    parser = HfArgumentParser(ExportArguments, prog="python pipeline/export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Model folder of the hub, e.g. hub/quickstart-ppo (or -sft, or -base).")
    args, positional = parser.parse_args_into_dataclasses()
    try:
        gguf_file, modelfile = export(positional.model, args.gguf, args.dtype)
    except PipelineError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {gguf_file} ({gguf_file.stat().st_size / 2**20:.1f} MiB) and {modelfile}")


if __name__ == "__main__":
    main()
