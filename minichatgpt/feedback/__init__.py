"""Judgements of the SFT model's replies: the labeler (AI feedback), the comparisons it labels, people's labels and
arena votes."""
