"""minichatgpt: the stages of building a small ChatGPT, one thin script each."""
