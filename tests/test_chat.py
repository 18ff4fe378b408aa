import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from test_errors import assert_one_line_error
from transformers import AutoModelForCausalLM, AutoTokenizer

from minichatgpt.chat import Chat, decode, decoding_config, reply
from minichatgpt.evaluation.metrics import load_metric
from minichatgpt.generation import generate_replies

PROMPTS = ["how are you ?", "what do you do for fun ?", "do you like movies ?", "where are you from ?",
           "i just got back from work", "what is your favorite food ?"]


@pytest.fixture(scope="module")
def chat_model(smoke_run):
    folder = smoke_run["hub"] / "smoke-ppo"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), folder


def test_one_shot_prompt_with_beam_search(chat_model):
    _, _, folder = chat_model
    result = run_cli(["pipeline/chat.py", "--model", folder, "--prompt", "how are you ?", "--strategy", "beam",
                      "--num_beams", "5", "--repetition_penalty", "1.2"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()


def test_interactive_two_turns_keep_history_and_trim_when_full(chat_model):
    _, _, folder = chat_model
    turns = "hi there , how are you today ?\nwhat do you like to do on weekends ?\n/settings\n/reset\n/quit\n"
    result = subprocess.run([sys.executable, "pipeline/chat.py", "--model", str(folder), "--strategy", "greedy",
                             "--max_new_tokens", "90"], input=turns, capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("bot> ") == 2
    assert "dropped 2 oldest turn(s) to fit the context window" in result.stdout
    assert "repetition_penalty=" in result.stdout and "(history cleared)" in result.stdout


def interactive_session(folder, turns: str) -> str:
    """What `pipeline/chat.py` prints for the typed `turns` (with --max_new_tokens 20); it must exit 0."""
    result = subprocess.run([sys.executable, "pipeline/chat.py", "--model", str(folder), "--max_new_tokens", "20"],
                            input=turns, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_strategy_switch_starts_from_the_shipped_defaults_and_keeps_what_was_set(chat_model):
    _, _, folder = chat_model
    stdout = interactive_session(folder, "/set strategy greedy\n/set strategy sample\n/settings\n/set top_k 20\n"
                                         "/set strategy greedy\n/set temperature 0.9\n/set strategy sample\n"
                                         "/settings\n/quit\n")
    shown = [line for line in stdout.splitlines() if "strategy=sample," in line]
    assert len(shown) == 2, stdout
    assert "temperature=0.7," in shown[0] and "top_p=0.9," in shown[0] and "top_k=0," in shown[0]
    assert "max_new_tokens=20," in shown[0]
    assert "temperature=0.9," in shown[1] and "top_p=0.9," in shown[1] and "top_k=20," in shown[1]


def test_a_bad_setting_gets_one_line_and_the_conversation_goes_on(chat_model):
    _, _, folder = chat_model
    stdout = interactive_session(folder, "hi there , how are you today ?\n/set max_new_tokens 500\n/set top_p 1.5\n"
                                         "/set temperature 0\n/set top_k 1.5\n/set strategy sample\n/settings\n"
                                         "what do you like to do ?\n/quit\n")
    errors = [line for line in stdout.splitlines() if "(error:" in line]
    assert len(errors) == 4, stdout
    assert "max_new_tokens must be from 1 to" in errors[0] and "top_p must be above 0 and at most 1" in errors[1]
    assert "temperature must be above 0, got 0.0" in errors[2] and "top_k takes an integer" in errors[3]
    assert "max_new_tokens=20," in stdout and "top_p=0.9," in stdout  # nothing refused was kept
    assert stdout.count("bot> ") == 2


def test_a_setting_generate_would_refuse_is_refused_at_start_in_one_line(chat_model):
    _, _, folder = chat_model
    result = subprocess.run([sys.executable, "pipeline/chat.py", "--model", str(folder), "--temperature", "0",
                             "--prompt", "hi"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert_one_line_error(result, "temperature must be above 0")


def test_end_of_input_exits_cleanly(chat_model):
    _, _, folder = chat_model
    result = subprocess.run([sys.executable, "pipeline/chat.py", "--model", str(folder)], input="", capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr


def test_history_is_kept_between_turns(chat_model):
    model, tokenizer, _ = chat_model
    chat = Chat(model, tokenizer, decoding_config(model.generation_config, "greedy", max_new_tokens=8), "be nice",
                plain=False)
    chat.say("my name is bob")
    ids, dropped = chat.prompt_ids("what is my name ?")
    text = tokenizer.decode(ids)
    assert dropped == 0 and text.startswith("<|system|>be nice") and "my name is bob" in text
    assert [m["role"] for m in chat.history] == ["user", "assistant"]


def test_greedy_and_beam_differ(chat_model):
    model, tokenizer, _ = chat_model
    greedy = [decode(model, tokenizer, p, strategy="greedy", max_len=16, repetition_penalty=1.0) for p in PROMPTS]
    beam = [decode(model, tokenizer, p, strategy="beam_search", max_len=16, beam_width=5, repetition_penalty=1.0)
            for p in PROMPTS]
    assert greedy != beam


def test_shipped_decoding_blocks_repeated_trigrams_and_measurement_sees_them(chat_model):
    model, tokenizer, _ = chat_model
    repeated = load_metric("repeated_ngrams")
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]

    def rate(**overrides):
        config = decoding_config(model.generation_config, "greedy", max_new_tokens=24, **overrides)
        replies = [reply(model, tokenizer, tokenizer.apply_chat_template(c, add_generation_prompt=True,
                                                                         return_dict=False), config)
                   for c in conversations]
        return repeated.compute(predictions=replies, n=3)["repeated_ngram_rate"]

    plain = rate(no_repeat_ngram_size=0)
    assert model.generation_config.no_repeat_ngram_size == 3 and model.generation_config.repetition_penalty == 1.0
    assert rate() == 0 < plain
    assert rate(no_repeat_ngram_size=0, repetition_penalty=1.5) < plain
    measured = generate_replies(model, tokenizer, conversations, do_sample=False, max_new_tokens=24,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert repeated.compute(predictions=measured, n=3)["repeated_ngram_rate"] > 0


def test_decoding_flags_override_generation_config(chat_model):
    model, _, _ = chat_model
    config = decoding_config(model.generation_config, "sample", temperature=0.3, top_k=5, no_repeat_ngram_size=3)
    assert config.do_sample and config.temperature == 0.3 and config.top_k == 5 and config.no_repeat_ngram_size == 3
    beam = decoding_config(model.generation_config, "beam", num_beams=3, length_penalty=0.5, early_stopping=True)
    assert not beam.do_sample and beam.num_beams == 3 and beam.length_penalty == 0.5
    assert model.generation_config.do_sample, "the model's own defaults are left alone"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_transformers_serve_answers_an_openai_chat_request(chat_model, tmp_path):
    _, _, folder = chat_model
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(cli), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                               "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.time() < deadline, "server did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        body = json.dumps({"model": str(folder), "max_tokens": 8,
                           "messages": [{"role": "user", "content": "how are you ?"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
        message = reply["choices"][0]["message"]
        assert message["role"] == "assistant" and isinstance(message["content"], str)
        assert reply["usage"]["completion_tokens"] <= 8
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
