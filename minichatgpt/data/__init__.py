"""Reading text and dialog sources, held-out splits, the chat format, preference pairs and tokenized training sets."""
