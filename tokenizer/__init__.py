"""Tokenizer stage: `python tokenizer/train.py --config <recipe>`."""
