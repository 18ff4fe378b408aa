"""Relevance metrics on cases whose answer is known: a model that memorised which reply answers which prompt ranks
the real reply first; a constant reply has specificity 0; a copy of the prompt is an echo."""

import evaluate
import pytest
import torch

from minichatgpt.evaluation.metrics import metric_path
from minichatgpt.evaluation.relevance import next_reply_recall, ranking_rows, reply_specificity

DIALOGS = [
    ("what color is the sky ?", "blue , and clouds are white"),
    ("do you like pizza ?", "yes , with extra cheese please"),
    ("where do you live ?", "in a small town near the sea"),
    ("what is your job ?", "i teach math at a high school"),
    ("how old is your dog ?", "he turned seven last spring"),
]


@pytest.fixture(scope="module")
def memorising_model(tmp_path_factory):
    """A tiny chat model trained until it has learned which reply follows which prompt."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from minichatgpt.model.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("memorising")
    tokenizer = train_tokenizer([f"{p} {r}" for p, r in DIALOGS] * 20, vocab_size=400, min_frequency=1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                       pad_token_id=tokenizer.pad_token_id))
    untrained = folder / "untrained"
    model.save_pretrained(untrained)
    tokenizer.save_pretrained(untrained)
    batch = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                           return_dict=False) for p, r in DIALOGS]
    width = max(map(len, batch))
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in batch])
    labels = torch.tensor([ids + [-100] * (width - len(ids)) for ids in batch])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = folder / "trained"
    model.save_pretrained(trained)
    tokenizer.save_pretrained(trained)
    return {"tokenizer": tokenizer, "trained": trained, "untrained": untrained}


def rows():
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in DIALOGS]
    return ranking_rows(conversations, context_turns=1, candidates=5, seed=0)


def test_ranking_rows_put_the_real_reply_first_among_replies_of_other_conversations():
    built = rows()
    assert len(built) == len(DIALOGS)
    for history, candidates in built:
        real = dict(DIALOGS)[history[-1]["content"]]
        assert candidates[0] == real
        assert len(candidates) == 5 and real not in candidates[1:]


def test_next_reply_ranking_finds_the_real_reply_only_when_the_model_knows_it(memorising_model):
    trained = next_reply_recall(memorising_model["trained"], memorising_model["tokenizer"], rows())
    untrained = next_reply_recall(memorising_model["untrained"], memorising_model["tokenizer"], rows())
    assert trained["recall_at_1"] == 1.0 and trained["recall_at_1_pmi"] == 1.0 and trained["mean_rank"] == 1.0
    assert trained["candidates"] == 5
    assert untrained["recall_at_1"] < 1.0


def test_next_reply_ranking_per_context_hits_average_to_the_recall(memorising_model):
    for folder in ("trained", "untrained"):
        result = next_reply_recall(memorising_model[folder], memorising_model["tokenizer"], rows(), per_context=True)
        assert len(result["hits_pmi"]) == len(DIALOGS) and set(result["hits_pmi"]) <= {0.0, 1.0}
        assert sum(result["hits_pmi"]) / len(DIALOGS) == pytest.approx(result["recall_at_1_pmi"])
    assert "hits_pmi" not in next_reply_recall(memorising_model["trained"], memorising_model["tokenizer"], rows())


def history(prompt):
    return [{"role": "user", "content": prompt}]


def test_specificity_is_one_for_human_replies_and_zero_for_a_constant_reply():
    histories = [history(p) for p, _ in DIALOGS]
    humans = [r for _, r in DIALOGS]
    assert reply_specificity(histories, humans, humans)["specificity"] == pytest.approx(1.0)
    constant = reply_specificity(histories, ["i don't know"] * len(DIALOGS), humans)
    assert constant["specificity"] == pytest.approx(0.0, abs=1e-6)
    assert constant["echo_rate"] == 0.0
    mismatched = reply_specificity(histories, humans[1:] + humans[:1], humans)
    assert mismatched["specificity"] < 0.2


def test_a_copy_of_the_prompt_is_an_echo_and_scores_zero():
    histories = [history(p) for p, _ in DIALOGS]
    humans = [r for _, r in DIALOGS]
    echoes = [p for p, _ in DIALOGS]
    result = reply_specificity(histories, echoes, humans)
    assert result["echo_rate"] == 1.0
    assert result["specificity"] == 0.0
    assert result["human_raw"] > 0.1


def test_specificity_per_reply_scores_average_to_the_specificity():
    histories = [history(p) for p, _ in DIALOGS]
    humans = [r for _, r in DIALOGS]
    result = reply_specificity(histories, humans[1:] + humans[:1], humans, per_reply=True)
    assert len(result["scores"]) == len(DIALOGS)
    assert sum(result["scores"]) / len(DIALOGS) == pytest.approx(result["specificity"])
    own = reply_specificity(histories, humans, humans, per_reply=True)["scores"]
    assert sum(own) / len(own) == pytest.approx(1.0)
    assert min(own) > max(result["scores"])  # each real reply fits its prompt better than a reply to another one


def test_specificity_loads_as_a_local_evaluate_module():
    metric = evaluate.load(metric_path("reply_specificity"))
    result = metric.compute(predictions=["blue sky", "cheese pizza"], references=["sky color ?", "pizza ?"])
    assert set(result) == {"raw", "echo_rate", "specificity", "specificity_se", "echo_rate_se", "prompts"}
    assert result["prompts"] == 2
