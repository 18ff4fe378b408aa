"""A byte-level BPE tokenizer with the chat format's special tokens, trained with `tokenizers`."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minichatgpt.data.chat_format import (
    CHAT_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    PAD,
    ROLE_MARKERS,
    SPECIAL_TOKENS,
    between_special_tokens,
)


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
