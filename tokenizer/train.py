"""Train the run's byte-level BPE tokenizer and push it to {hub_dir}/{run_name}-tokenizer.

    python tokenizer/train.py --config recipes/smoke.yaml [--vocab_size 4000]
"""

import time

from minichatgpt.cards import publish
from minichatgpt.console import run_stage
from minichatgpt.data.chat_format import SPECIAL_TOKENS
from minichatgpt.data.splits import text_splits
from minichatgpt.errors import PipelineError
from minichatgpt.hub import check_writable
from minichatgpt.model.tokenizer import train_tokenizer


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
    facts = {"documents": len(texts), "megabytes": n_bytes / 2**20, "sources": ", ".join(data_args.text_sources),
             "special_tokens": ", ".join(f"`{t}`" for t in SPECIAL_TOKENS)}
    publish(recipe, "tokenizer", overrides, tokenizer.save_pretrained, metrics=metrics, facts=facts,
            data_args=data_args, sources=data_args.text_sources)


if __name__ == "__main__":
    run_stage(main, __doc__)
