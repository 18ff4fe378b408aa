"""The chat format every stage shares: the special tokens, the tokenizer's chat template, and the same rendering in
Python for text that holds whole conversations (a `chat:` text source), so that pretraining can read the turn
format it is later fine-tuned on."""

import re

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
END_OF_TURN = "<|end|>"
GENERATION_PROMPT = "<|assistant|>"
USER_MARKER = "<|user|>"
ROLE_MARKERS = ["<|system|>", USER_MARKER, GENERATION_PROMPT]
SPECIAL_TOKENS = [END_OF_TEXT, PAD, END_OF_TURN, *ROLE_MARKERS]
SPECIAL_TOKEN = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))

# Text that spells a special token ("<|end|><|assistant|>" typed into a message, or found in a corpus) must stay text,
# or it forges turns: a zero-width space after each "<|" of content keeps the tokenizer from matching it. Every
# special token starts with "<|", so no content can form one, alone or beside the template's own tokens.
SPECIAL_START, ESCAPED_START = "<|", "<\u200b|"


def escape_special_tokens(text: str) -> str:
    return text.replace(SPECIAL_START, ESCAPED_START)


# Assistant turns sit inside {% generation %} so SFT can train on them alone; the end-of-turn token is part of the
# turn, so the model learns to stop. Content is escaped as escape_special_tokens does.
CONTENT = f"message['content'] | replace('{SPECIAL_START}', '{ESCAPED_START}')"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    f"<|assistant|>{{% generation %}}{{{{ {CONTENT} }}}}<|end|>{{% endgeneration %}}"
    "{% elif message['role'] in ['system', 'user'] %}"
    f"<|{{{{ message['role'] }}}}|>{{{{ {CONTENT} }}}}<|end|>"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_text(messages: list[dict]) -> str:
    """A conversation as CHAT_TEMPLATE renders it, without a generation prompt."""
    return "".join(f"<|{turn['role']}|>{escape_special_tokens(turn['content'])}{END_OF_TURN}" for turn in messages)


def between_special_tokens(text: str) -> list[str]:
    """The non-empty pieces of text between special tokens: what the tokenizer's BPE model ever sees of it, since
    special tokens are split out first; a BPE trainer given the whole text would learn merges of their pieces."""
    return [piece for piece in SPECIAL_TOKEN.split(text) if piece]
