"""Train the run's byte-level BPE tokenizer and push it to {hub_dir}/{run_name}-tokenizer.

    python tokenizer/train.py --config recipes/smoke.yaml [--vocab_size 4000]
"""

import logging
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.chat_format import (
    CHAT_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    PAD,
    ROLE_MARKERS,
    SPECIAL_TOKENS,
    between_special_tokens,
)
from pipeline.common import metrics_table, run_stage
from pipeline.config import split_settings
from pipeline.data import text_splits
from pipeline.errors import PipelineError
from pipeline.hub import card_metadata, check_writable, push

logger = logging.getLogger("minichatgpt.tokenizer")


def train_tokenizer(texts, vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pieces = [piece for text in texts for piece in between_special_tokens(text)]
    backend.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        extra_special_tokens=[END_OF_TURN, *ROLE_MARKERS],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=10**6,
    )
    return tokenizer


def main(recipe, overrides):
    data_args, args = recipe.parse_stage("tokenizer", overrides)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise PipelineError(f"{recipe.path}: tokenizer.vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (the "
                            f"256 bytes plus {len(SPECIAL_TOKENS)} special tokens), got {args.vocab_size}")
    check_writable(recipe.run.hub_dir)
    train, held_out = text_splits(data_args)
    texts = list(train["text"])
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    start = time.time()
    tokenizer = train_tokenizer(texts, args.vocab_size, args.min_frequency)
    seconds = time.time() - start

    eval_texts = list(held_out["text"])
    eval_bytes = sum(len(t.encode("utf-8")) for t in eval_texts)
    eval_words = sum(len(t.split()) for t in eval_texts)
    eval_tokens = sum(len(ids) for ids in tokenizer(eval_texts)["input_ids"])
    metrics = {
        "vocab_size": len(tokenizer),
        "train_seconds": round(seconds, 2),
        "train_mb_per_s": round(n_bytes / 2**20 / max(seconds, 1e-9), 2),
        "tokens_per_word": round(eval_tokens / max(eval_words, 1), 3),
        "bytes_per_token": round(eval_bytes / max(eval_tokens, 1), 3),
    }
    print(
        f"tokenizer: vocab {metrics['vocab_size']}, trained on {n_bytes / 2**20:.1f} MB in {seconds:.1f}s "
        f"({metrics['train_mb_per_s']} MB/s); held-out: {metrics['tokens_per_word']} tokens/word, "
        f"{metrics['bytes_per_token']} bytes/token"
    )
    name = recipe.hub_name("tokenizer")
    body = f"""# {name}

Byte-level BPE tokenizer of the minichatgpt run `{recipe.run_name}`, trained with `tokenizers` on
{len(texts)} documents ({n_bytes / 2**20:.1f} MB) of {', '.join(data_args.text_sources)}.

Special tokens: {', '.join(f'`{t}`' for t in SPECIAL_TOKENS)}. The chat template renders
`<|role|>content<|end|>` per turn and `<|assistant|>` as the generation prompt.

{metrics_table(metrics)}
"""
    target = push(
        recipe.run.hub_dir,
        name,
        tokenizer.save_pretrained,
        metadata={"stage": "tokenizer", "parent": None, "recipe": str(recipe.path), "metrics": metrics,
                  "data_split": split_settings(data_args),
                  "fingerprint": recipe.fingerprint("tokenizer", overrides)},
        card_body=body,
        keep_revisions=recipe.run.keep_revisions,
        card_metadata=card_metadata(None, data_args.text_sources, recipe.path, metrics, "text-generation"),
    )
    print(f"pushed {target}")


if __name__ == "__main__":
    run_stage(main, __doc__)
