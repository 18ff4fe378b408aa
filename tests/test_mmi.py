"""Maximum-mutual-information decoding: on a model that answers every prompt "i don't know" most of the time, plain
likelihood picks the generic reply and MMI reranking picks the reply that fits the prompt; batch replies from a file."""

import pytest
import torch
from conftest import run_cli

from minichatgpt.chat import decoding_config, mmi_rerank
from minichatgpt.generation import MMI_DEFAULTS, chat_generation_config, reply_log_likelihoods, reply_token_ids

DIALOGS = [
    ("what color is the sky ?", "blue , and the clouds are white"),
    ("do you like pizza ?", "yes , with extra cheese please"),
    ("where do you live ?", "in a small town near the sea"),
    ("what is your job ?", "i teach math at a high school"),
    ("how old is your dog ?", "he turned seven last spring"),
]
GENERIC = "i don't know"


@pytest.fixture(scope="module")
def generic_model():
    """A tiny chat model trained on each prompt answered twice "i don't know" and once with its own reply, and on
    the empty prompt answered by every reply as often as it occurs, so p(reply | empty prompt) is the reply's prior."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from minichatgpt.model.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([f"{p} {r} {GENERIC}" for p, r in DIALOGS] * 20, vocab_size=400, min_frequency=1)
    conversations = [(p, r) for p, r in DIALOGS] + [(p, GENERIC) for p, _ in DIALOGS] * 2
    conversations += [("", r) for _, r in conversations]
    batch = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                           return_dict=False) for p, r in conversations]
    width = max(map(len, batch))
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in batch])
    labels = torch.tensor([ids + [-100] * (width - len(ids)) for ids in batch])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                       pad_token_id=tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def test_mmi_picks_the_specific_reply_where_likelihood_picks_the_generic_one(generic_model):
    model, tokenizer = generic_model
    for prompt, specific in DIALOGS:
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   return_dict=False)
        generic_ll, specific_ll = reply_log_likelihoods(
            model, [prompt_ids] * 2, [reply_token_ids(tokenizer, r) for r in (GENERIC, specific)])
        assert generic_ll > specific_ll
        for mmi_lambda in (MMI_DEFAULTS["mmi_lambda"], 1.0):
            candidates = [reply_token_ids(tokenizer, text) for text in (GENERIC, specific, GENERIC)]
            assert mmi_rerank(model, tokenizer, prompt_ids, candidates, mmi_lambda) == candidates[1]


def test_mmi_strategy_samples_candidates_with_defaults_from_the_generation_config(generic_model):
    _, tokenizer = generic_model
    shipped = chat_generation_config(tokenizer)
    config = decoding_config(shipped, "mmi")
    assert config.do_sample and config.num_return_sequences == shipped.num_candidates == 8
    assert config.mmi_lambda == 0.5
    overridden = decoding_config(shipped, "mmi", num_candidates=3, mmi_lambda=1.0)
    assert (overridden.num_return_sequences, overridden.mmi_lambda) == (3, 1.0)
    assert decoding_config(overridden, "greedy").num_return_sequences == 1


def test_prompts_file_gives_one_reply_per_line_as_the_chat_decodes(smoke_run, tmp_path):
    folder = smoke_run["hub"] / "smoke-ppo"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("how are you ?\n\nwhat do you do for fun ?\n", encoding="utf-8")
    batch = run_cli(["pipeline/chat.py", "--model", folder, "--prompts_file", prompts, "--strategy", "mmi",
                     "--num_candidates", "3", "--max_new_tokens", "12"], check=True)
    lines = batch.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    one = run_cli(["pipeline/chat.py", "--model", folder, "--prompt", "what do you do for fun ?", "--strategy", "mmi",
                   "--num_candidates", "3", "--max_new_tokens", "12"], check=True)
    assert " ".join(one.stdout.split()) == lines[2]
    missing = run_cli(["pipeline/chat.py", "--model", folder, "--prompts_file", tmp_path / "nope.txt"])
    assert missing.returncode == 2 and missing.stderr.strip().endswith("prompts file not found")
