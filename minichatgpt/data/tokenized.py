"""Tokenized training sets: text packed into blocks for pretraining, conversations cut into windows for SFT."""

from itertools import chain

from datasets import Dataset

from minichatgpt.data.splits import conversation_windows, text_splits
from minichatgpt.errors import PipelineError


def pack_blocks(dataset, tokenizer, block_size: int, num_proc: int | None):
    """Tokenize, end every document with <|endoftext|>, and pack into blocks of `block_size` tokens."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"])["input_ids"]]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        usable = len(ids) // block_size * block_size
        blocks = [ids[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [b[:] for b in blocks]}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                            desc="tokenizing")
    return tokenized.map(group, batched=True, batch_size=1000, num_proc=num_proc, desc="packing")


def windows(dataset, max_turns: int, tokenizer, max_length: int) -> Dataset:
    """The conversations cut into windows of at most `max_turns` turns that fit in `max_length` tokens once rendered,
    so that the trainer truncates none: the chat template renders a turn as its role token, its content and the
    end-of-turn token."""
    conversations = dataset["messages"]
    contents = [turn["content"] for messages in conversations for turn in messages]
    lengths = iter(len(ids) + 2 for ids in tokenizer(contents, add_special_tokens=False)["input_ids"])
    return Dataset.from_dict({"messages": [
        window for messages in conversations
        for window in conversation_windows(messages, max_turns, [next(lengths) for _ in messages], max_length)]})


def pretraining_blocks(recipe, data_args, tokenizer, block_size: int, max_eval_blocks: int | None, training_args):
    """The run's training and held-out text packed into blocks of `block_size` tokens (the main process first, so
    that the others read its cache); at most `max_eval_blocks` held-out blocks, None when there are none."""
    train_text, eval_text = text_splits(data_args)
    num_proc = 2 if len(train_text) > 20_000 else None
    with training_args.main_process_first(desc="packing"):
        train_blocks = pack_blocks(train_text, tokenizer, block_size, num_proc)
        eval_blocks = pack_blocks(eval_text, tokenizer, block_size, None)
    if len(train_blocks) == 0:
        raise PipelineError(f"{recipe.path}: the training text is shorter than one block of model.n_positions="
                            f"{block_size} tokens; add text or lower n_positions")
    if max_eval_blocks:
        eval_blocks = eval_blocks.select(range(min(len(eval_blocks), max_eval_blocks)))
    return train_blocks, eval_blocks if len(eval_blocks) else None
