"""The RL stage: the composite reward's parts on constructed replies, its PPO adapter read the way PPOTrainer reads a
reward model, RLOO and GRPO end to end, and the seed benchmark."""

import json
import math
import shutil

import pytest
import torch
from conftest import ROOT, launch, run_cli, seed_hub, write_recipe
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, pipeline
from trl.experimental.utils import get_reward

from minichatgpt.errors import PipelineError
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults
from minichatgpt.training.guards import guard_flags
from minichatgpt.training.rl_reward import CompositeReward, PPORewardModel, rloo_reward_funcs

TOPICS = ["apples", "trains", "music", "movies", "dogs", "coffee", "soccer", "books"]


@pytest.fixture(scope="module")
def tokenizer(smoke_run):
    return AutoTokenizer.from_pretrained(smoke_run["hub"] / "smoke-sft")


@pytest.fixture(scope="module")
def topic_model(tokenizer):
    """A tiny GPT-2 trained for a few steps to answer "i like X" with "X are great": the context decides the reply."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                                       eos_token_id=tokenizer.eos_token_id))
    rows = [tokenizer.apply_chat_template(conversation(topic), return_dict=True, return_assistant_tokens_mask=True)
            for topic in TOPICS]
    width = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"])) for r in rows])
    replies = torch.tensor([r["assistant_masks"] + [0] * (width - len(r["assistant_masks"])) for r in rows])
    labels = input_ids.masked_fill(replies == 0, -100)  # padding is never a label, so it needs no attention mask
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(90):
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def reward_model(tokenizer):
    torch.manual_seed(1)
    return GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1,
                                                    n_head=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                                                    bos_token_id=None, eos_token_id=tokenizer.eos_token_id)).eval()


def conversation(topic, reply=None):
    return [{"role": "user", "content": f"i like {topic}"},
            {"role": "assistant", "content": f"{topic} are great" if reply is None else reply}]


def prompt_ids(tokenizer, topic):
    return tokenizer.apply_chat_template(conversation(topic)[:1], add_generation_prompt=True, return_dict=False)


def reply_ids(tokenizer, text, end=True):
    return tokenizer(text + ("<|end|>" if end else ""), add_special_tokens=False)["input_ids"]


def composite(scorer, reference, tokenizer, **weights):
    return CompositeReward(scorer, reference, tokenizer, weights=weights, end_token_id=tokenizer.eos_token_id)


def test_a_loop_and_a_missing_end_token_are_penalised(tokenizer, reward_model, topic_model):
    reward = composite(reward_model, topic_model, tokenizer, repetition=1.0, end_of_turn=1.0)
    prompts = [prompt_ids(tokenizer, "music")] * 3
    replies = [reply_ids(tokenizer, "i have to go , see you tomorrow at the station"),
               reply_ids(tokenizer, "i have to go to go to go to go to go to go"),
               reply_ids(tokenizer, "i have to go , see you tomorrow at the station", end=False)]
    parts = reward.parts(prompts, replies)
    assert parts["repetition"][0] == 0.0 and parts["repetition"][1] < -0.3
    assert parts["end_of_turn"] == [0.0, 0.0, -1.0]
    assert reward(prompts, replies) == [a + b for a, b in zip(parts["repetition"], parts["end_of_turn"])]


def test_a_reply_that_echoes_the_user_is_penalised_by_the_labelers_rule(tokenizer, reward_model, topic_model):
    reward = composite(reward_model, topic_model, tokenizer, echo=2.0)
    prompts = [prompt_ids(tokenizer, "music")] * 3
    replies = [reply_ids(tokenizer, "i like music"), reply_ids(tokenizer, "like music", end=False),
               reply_ids(tokenizer, "music is great , what do you play ?")]
    assert reward.part("echo", prompts, replies) == [-1.0, -1.0, 0.0]
    assert reward(prompts, replies) == [-2.0, -2.0, 0.0]


def test_a_reply_to_another_context_gets_a_lower_relevance_term(tokenizer, reward_model, topic_model):
    reward = composite(reward_model, topic_model, tokenizer, relevance=1.0)
    replies = [reply_ids(tokenizer, f"{topic} are great") for topic in TOPICS]
    own = reward.part("relevance", [prompt_ids(tokenizer, t) for t in TOPICS], replies)
    other = reward.part("relevance", [prompt_ids(tokenizer, t) for t in TOPICS[1:] + TOPICS[:1]], replies)
    gaps = [s - o for s, o in zip(own, other)]
    assert min(gaps) > 0.25 and sum(gaps) / len(gaps) > 1.0, gaps


def test_reward_model_score_is_standardised_by_the_warm_up_scores_and_kept(tokenizer, reward_model, topic_model):
    reward = composite(reward_model, topic_model, tokenizer, reward_model=1.0)
    prompts = [prompt_ids(tokenizer, t) for t in TOPICS]
    replies = [reply_ids(tokenizer, f"{t} are great") for t in TOPICS]
    with pytest.raises(PipelineError, match="warm-up rollouts first"):
        reward.part("reward_model", prompts, replies)
    reward.set_reward_model_scale(reward.reward_model_scores(prompts, replies))
    first = reward.part("reward_model", prompts, replies)
    mean = sum(first) / len(first)
    assert abs(mean) < 1e-5 and abs(sum((v - mean) ** 2 for v in first) / len(first) - 1) < 1e-3
    scale = reward.reward_model_scale
    reward.part("reward_model", prompts[:2], [reply_ids(tokenizer, "ok")] * 2)
    assert reward.reward_model_scale == scale


def test_ppo_reads_the_composite_like_a_reward_model(tokenizer, reward_model, topic_model):
    """trl's own get_reward on a PPO-shaped batch (prompts padded left, replies cut at <|end|> and padded right) gives
    the composite without its end-of-turn part, which PPOTrainer applies as missing_eos_penalty."""
    reward = composite(reward_model, topic_model, tokenizer, reward_model=1.0, repetition=1.0, relevance=0.5,
                       end_of_turn=1.0)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                              {"role": "user", "content": "i like dogs"}],
                                             add_generation_prompt=True, return_dict=False),
               prompt_ids(tokenizer, "music")]
    replies = [reply_ids(tokenizer, "dogs dogs dogs dogs"), reply_ids(tokenizer, "music <|assistant|> is", end=False)]
    reward.set_reward_model_scale(reward.reward_model_scores(prompts, replies))
    pad = tokenizer.pad_token_id
    context = max(map(len, prompts))
    width = max(map(len, replies))
    query_responses = torch.tensor([[pad] * (context - len(p)) + p + r + [pad] * (width - len(r))
                                    for p, r in zip(prompts, replies)])
    adapter = PPORewardModel(reward, tokenizer.convert_tokens_to_ids("<|end|>"),
                             tokenizer.convert_tokens_to_ids("<|assistant|>"))
    _, scores, _ = get_reward(adapter, query_responses, pad, context)
    expected = reward(prompts, replies, skip=("end_of_turn",))
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    funcs, weights = rloo_reward_funcs(reward)
    assert [f.__name__ for f in funcs] == ["reward_model", "repetition", "relevance", "end_of_turn"]
    assert weights == [1.0, 1.0, 0.5, 1.0]


def test_rloo_pushes_a_chat_model_for_stock_pipeline(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "rl")
    recipe = write_recipe(tmp_path / "rl.yaml", tmp_path)
    result = launch("pipeline/ppo.py", recipe, "--algorithm", "rloo", "--kl_target", "1000", "--temperature", "0.7")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "hub" / "rl-ppo"
    meta = json.loads((folder / "minichatgpt.json").read_text())
    assert meta["algorithm"] == "rloo" and meta["metrics"]["episodes"] >= 16
    assert meta["temperature"] == 0.7 and "sampled at temperature 0.7" in (folder / "README.md").read_text()
    assert meta["metrics"]["final_kl_coef"] < 0.05, "a KL far under its target lowers the coefficient"
    assert any("objective/kl" in row and "rewards/relevance/mean" in row for row in meta["log_history"])
    assert (folder / "rl_curve.png").is_file()
    chat = pipeline("text-generation", model=str(folder))
    out = chat([{"role": "user", "content": "how are you ?"}], max_new_tokens=8)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_grpo_trains_the_composite_and_pushes_a_chat_model_for_stock_pipeline(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "grpo")
    recipe = write_recipe(tmp_path / "grpo.yaml", tmp_path, ppo={"algorithm": "grpo", "grpo_num_generations": 4})
    result = launch("pipeline/ppo.py", recipe, "--grpo_loss_type", "dr_grpo")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "hub" / "grpo-ppo"
    meta = json.loads((folder / "minichatgpt.json").read_text())
    assert meta["algorithm"] == "grpo" and meta["metrics"]["episodes"] >= 16
    assert "GRPO (TRL `trl.GRPOTrainer`, 4 replies per prompt, loss `dr_grpo`)" in (folder / "README.md").read_text()
    # Every part of the composite reached GRPO, and its KL to SFT was measured and watched by the guards.
    training_logs = [row for row in meta["log_history"] if "objective/kl" in row]
    assert training_logs and all(f"rewards/{part}/mean" in training_logs[0] for part in meta["reward_weights"])
    assert meta["guards"]["history"]
    chat = pipeline("text-generation", model=str(folder))
    out = chat([{"role": "user", "content": "how are you ?"}], max_new_tokens=8)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_grpo_num_generations_must_divide_the_batch(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "odd")
    recipe = write_recipe(tmp_path / "odd.yaml", tmp_path, ppo={"algorithm": "grpo", "grpo_num_generations": 3,
                                                                 "normalize_reward_model": False})
    result = run_cli(["pipeline/ppo.py", "--config", recipe])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [(
        "error: ppo.grpo_num_generations (3) must divide the replies per batch, per_device_train_batch_size x "
        "gradient_accumulation_steps x processes (8)")]
    assert not (tmp_path / "hub" / "odd-ppo").exists()


@pytest.mark.slow
def test_seed_benchmark_reports_every_field(smoke_run, tmp_path):
    recipe = write_recipe(tmp_path / "bench.yaml", tmp_path)
    shutil.copytree(smoke_run["hub"], tmp_path / "hub", ignore=shutil.ignore_patterns("smoke-ppo", ".revisions"),
                    dirs_exist_ok=True)
    for stage in ("sft", "reward"):
        (tmp_path / "hub" / f"smoke-{stage}").rename(tmp_path / "hub" / f"bench-{stage}")
    shutil.copytree(smoke_run["runs"] / "smoke" / "comparisons", tmp_path / "runs" / "bench" / "comparisons")
    result = run_cli([ROOT / "bench" / "rlhf_seeds.py", "--recipe", recipe, "--seeds", "2", "--first_seed", "3",
                      "--prompts", "16", "--ranking_contexts", "8", "--algorithms", "ppo", "rloo", "grpo", "dpo",
                      "--json", tmp_path / "seeds.json"], timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "seeds.json").read_text())
    assert report["prompts"] == 16
    for algorithm in ("ppo", "rloo", "grpo", "dpo"):
        assert [row["seed"] for row in report[algorithm]["seeds"]] == [3, 4]
        for field in report["fields"]:
            assert all(field in row for row in report[algorithm]["seeds"])
            assert f"{field}" in report[algorithm]["mean"] and f"{field}" in report[algorithm]["std"]
        for row in report[algorithm]["seeds"]:  # the gain is paired: the same prompts as SFT's specificity
            assert row["specificity_gain"] == pytest.approx(row["specificity"] - report["sft"]["specificity"])
            assert row["specificity_gain_se"] >= 0
    assert all(row["final_kl"] is None for row in report["dpo"]["seeds"]), "DPO samples nothing, logs no KL"
    assert "mean ± std" in result.stdout


def test_clipped_reward_model_score_stays_within_the_clip(tokenizer, reward_model, topic_model):
    reward = CompositeReward(reward_model, topic_model, tokenizer, weights={"reward_model": 1.0},
                             end_token_id=tokenizer.eos_token_id, reward_model_clip=0.5)
    prompts = [prompt_ids(tokenizer, t) for t in TOPICS]
    replies = [reply_ids(tokenizer, f"{t} are great") for t in TOPICS]
    reward.set_reward_model_scale(reward.reward_model_scores(prompts, replies))
    scores = reward.part("reward_model", prompts, replies)
    assert max(abs(s) for s in scores) == 0.5


def guard_log(step: int, score: float, distinct_2: float, unique_replies: float = 0.6, repeated_3gram: float = 0.17
              ) -> dict:
    return {"step": step, "score": score, "kl": 0.1 * step, "distinct_2": distinct_2, "unique_replies": unique_replies,
            "repeated_3gram": repeated_3gram}


def test_guards_need_a_sustained_change_not_one_noisy_log():
    # One noisy log (a high-reward batch while one of a few replies changed) is not hacking.
    noisy = [guard_log(i, (0.1, -0.2)[i % 2], (0.32, 0.27)[i % 3 == 0], (0.6, 0.28)[i == 7]) for i in range(1, 13)]
    assert any(row["score"] > noisy[0]["score"] and row["distinct_2"] < 0.9 * noisy[0]["distinct_2"]
               for row in noisy[1:])
    assert guard_flags(noisy) == {}
    hacked = [guard_log(i, 0.1 * i, 0.4 - 0.02 * i) for i in range(1, 13)]
    assert guard_flags(hacked[:5]) == {}
    assert list(guard_flags(hacked)) == ["possible reward hacking"]
    assert "distinct-2" in guard_flags(hacked)["possible reward hacking"]
    more_varied = [guard_log(i, 0.1 * i, 0.3 + 0.01 * i, 0.6 - 0.01 * i) for i in range(1, 13)]
    assert guard_flags(more_varied) == {}
    collapsed = [guard_log(i, 0.1 * i, 0.3, 0.9 if i < 4 else 0.125) for i in range(1, 13)]
    assert list(guard_flags(collapsed)) == ["collapse"]
    looping = [guard_log(i, 0.1 * i, 0.3, 0.6, 0.17 + 0.025 * i) for i in range(1, 13)]
    assert list(guard_flags(looping)) == ["loops"] and "from 0.22 to 0.4" in guard_flags(looping)["loops"]
    fewer_loops = [guard_log(i, 0.1 * i, 0.3, 0.6, 0.3 - 0.02 * i) for i in range(1, 13)]
    assert guard_flags(fewer_loops) == {}


def test_ppo_is_the_shipped_rl_algorithm_and_logs_the_labelers_gold_against_the_proxy(smoke_run):
    for name in ("quickstart", "chat-hour", "smoke"):
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert recipe.parse("ppo", defaults=trainer_defaults())[0].algorithm == "ppo"
    folder = smoke_run["hub"] / "smoke-ppo"
    meta = json.loads((folder / "minichatgpt.json").read_text())
    card = (folder / "README.md").read_text()
    assert meta["algorithm"] == "ppo" and "PPO (TRL `trl.experimental.ppo.PPOTrainer`, trl 1.12.0)" in card
    assert "| prompt | SFT | PPO |" in card and "RLOO" not in card
    history = meta["gold_proxy"]
    assert [row["step"] for row in history][:2] == [0, 1] and history[0]["kl"] == 0 and len(history) >= 3
    assert all(math.isfinite(row["gold"]) and math.isfinite(row["proxy"]) for row in history)
    assert history[0]["gold_gain"] == history[0]["proxy_gain"] == 0
    assert "## Gold and proxy" in card and (folder / "gold_proxy.png").stat().st_size > 1000
    assert 0 <= meta["metrics"]["ppo_gold_win_rate"] <= 1
