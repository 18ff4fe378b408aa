"""The project's metrics are local `evaluate` modules, loaded by path with the hub offline."""

import math

import evaluate
import pytest

from minichatgpt.evaluation.metrics import metric_path


def load(name):
    return evaluate.load(metric_path(name))


def test_loads_by_relative_path_like_the_docs_say(monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    assert evaluate.load("eval/metrics/distinct_n").compute(predictions=["a b"])["distinct_1"] == 1.0


def test_distinct_n():
    result = load("distinct_n").compute(predictions=["a b a b", "c d"], max_n=2)
    assert result["distinct_1"] == pytest.approx(4 / 6)
    assert result["distinct_2"] == pytest.approx(3 / 4)


def test_repeated_ngrams():
    result = load("repeated_ngrams").compute(predictions=["a b c a b c", "x y z w"], n=3)
    assert result["repeated_ngram_rate"] == pytest.approx((1 - 3 / 4 + 0) / 2)


def test_win_rate_and_pairwise_accuracy():
    assert load("win_rate").compute(predictions=[2.0, 0.0, 1.0], references=[1.0, 1.0, 1.0])["win_rate"] == 0.5
    result = load("pairwise_accuracy").compute(predictions=[1.0, 3.0], references=[2.0, 0.0])
    assert (result["accuracy"], result["mean_margin"], result["pairs"]) == (0.5, 1.0, 2)
    assert result["accuracy_se"] == pytest.approx(0.5)


def test_perplexity_of_a_real_tiny_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from minichatgpt.model.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["hello world, how are you today?"] * 50, vocab_size=300, min_frequency=1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text, reply = "hello world, how are you today?", " how are you today?"
    result = load("perplexity").compute(predictions=[text], model_id=str(tmp_path))
    assert 1 < result["perplexity"] < 1000
    assert result["tokens"] == len(tokenizer(text)["input_ids"]) - 1
    conditioned = load("perplexity").compute(predictions=[reply], contexts=["hello world,"], model_id=str(tmp_path))
    assert conditioned["tokens"] == len(tokenizer(reply)["input_ids"])
    assert math.isfinite(conditioned["perplexity"])
