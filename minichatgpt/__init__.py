"""minichatgpt: everything the stage scripts (pipeline/, tokenizer/train.py, eval/run.py) share.

- recipe, arguments, console: a recipe file, its sections as dataclasses, and a stage's command line;
- data: reading text and dialog sources, held-out splits, the chat format, preference pairs, tokenized sets;
- model: the GPT-2 we pretrain, its tokenizer, attention, loss and optimizers, and loading models safely;
- training: machine-dependent defaults, checkpoints, logs and throughput, the reward model's and the RL trainers'
  setup, the RL reward, guards and the gold/proxy monitor;
- feedback: the labeler, comparisons of the SFT model's replies, people's labels and arena votes;
- generation, chat, serving: replies from a model, a conversation, and the models the web app serves;
- hub, gguf: the local hub folder with revisions and cards, and the GGUF export;
- evaluation: metrics, statistics, comparisons of policies and the report.
"""

import os

# Before trl and tokenizers are imported by any module of the package.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
