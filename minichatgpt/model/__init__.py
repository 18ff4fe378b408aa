"""The GPT-2 minichatgpt pretrains, its tokenizer, attention kernels, loss and optimizers, and loading models safely."""
