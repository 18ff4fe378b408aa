"""Stage behaviour beyond the happy path: resuming after SIGKILL, two processes, LoRA, reward ranking, PPO guards."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, launch, run_cli, seed_hub, tiny_labelers, write_recipe
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from minichatgpt.feedback.comparisons import comparison_pairs, read_comparisons
from minichatgpt.generation import fit_history, render_prompts
from minichatgpt.training.rl import prompt_conversations


def metrics(tmp_path, name):
    return json.loads((tmp_path / "hub" / name / "minichatgpt.json").read_text())["metrics"]


def run_killed_then_resumed(recipe, script, checkpoint):
    """Start a stage, SIGKILL it (launcher and worker) once `checkpoint` is complete, then start it again."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
               str(ROOT / "accelerate_config.yaml"), str(ROOT / script), "--config", str(recipe)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("stage, script, section, steps, hub_suffix", [
    ("pretrain", "pipeline/pretrain.py", "pretrain", 300, "base"),
    ("sft", "pipeline/sft.py", "sft", 200, "sft"),
])
def test_sigkill_then_restart_resumes_and_matches_an_uninterrupted_run(smoke_run, tmp_path, stage, script, section,
                                                                       steps, hub_suffix):
    settings = {"max_steps": steps, "save_steps": steps // 3, "logging_steps": 10, "eval_steps": steps,
                "save_total_limit": 3}
    previous = {"pretrain": ("tokenizer",), "sft": ("tokenizer", "base")}[stage]
    results = {}
    for name in ("straight", "killed"):
        seed_hub(smoke_run, tmp_path, name, *previous)
        recipe = write_recipe(tmp_path / f"{name}.yaml", tmp_path, **{section: settings})
        if name == "straight":
            assert launch(script, recipe, "--debug").returncode == 0
        else:
            checkpoint = tmp_path / "runs" / name / section / f"checkpoint-{steps // 3}"
            resumed = run_killed_then_resumed(recipe, script, checkpoint)
            assert "resuming from" in resumed.stdout
        results[name] = metrics(tmp_path, f"{name}-{hub_suffix}")
    assert results["killed"]["train_loss"] == pytest.approx(results["straight"]["train_loss"], abs=0.02)
    assert results["killed"]["eval_loss"] == pytest.approx(results["straight"]["eval_loss"], abs=0.02)


def test_two_processes_both_train_and_one_pushes(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "ddp", "tokenizer")
    recipe = write_recipe(tmp_path / "ddp.yaml", tmp_path, pretrain={"max_steps": 10, "eval_steps": 10})
    result = launch("pipeline/pretrain.py", recipe, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2 pretrain summary" in result.stdout and "rank 1/2 pretrain summary" in result.stdout
    assert result.stdout.count("pushed ") == 1
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hub" / "ddp-base")
    assert metrics(tmp_path, "ddp-base")["tokens_seen"] == 10 * 8 * 2 * 128


def test_rl_under_two_processes_gives_every_process_the_same_reward_scale(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "rlddp")
    recipe = write_recipe(tmp_path / "rlddp.yaml", tmp_path, ppo={"algorithm": "rloo", "max_prompts": 300,
                                                                  "reward_scale_rollouts": 256})
    result = launch("pipeline/ppo.py", recipe, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    scales = dict(re.findall(r"^rank (\d)/2 reward-model scale from (.*)$", result.stdout, flags=re.MULTILINE))
    assert sorted(scales) == ["0", "1"] and scales["0"] == scales["1"], result.stdout[-3000:]
    scale = json.loads((tmp_path / "hub" / "rlddp-ppo" / "minichatgpt.json").read_text())["reward_model_scale"]
    assert scales["0"] == f"256 warm-up rollouts: mean {scale[0]:.4f}, std {scale[1]:.4f}"


def test_lora_sft_pushes_a_merged_model(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "lora", "tokenizer", "base")
    recipe = write_recipe(tmp_path / "lora.yaml", tmp_path, sft={"use_peft": True, "lora_r": 4, "lora_alpha": 8,
                                                                 "max_steps": 5})
    result = launch("pipeline/sft.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "hub" / "lora-sft"
    assert not (folder / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "hub" / "lora-base")
    assert not merged.transformer.h[0].attn.c_attn.weight.equal(base.transformer.h[0].attn.c_attn.weight)
    assert "LoRA merged" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_sft_settings_benchmark_trains_each_variant_from_the_base_and_pairs_it_with_the_first(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "sftbench", "tokenizer", "base")
    recipe = write_recipe(tmp_path / "sftbench.yaml", tmp_path, sft={"max_steps": 6}, eval={"max_prompts": 12})
    result = run_cli([ROOT / "bench" / "sft_settings.py", "--config", recipe, "--variants", "", "--max_steps 3",
                      "--ranking_contexts", "8", "--json", tmp_path / "sft.json"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "sft.json").read_text())
    assert report["prompts"] == 12 and report["ranking_contexts"] == 8
    first, second = report["variants"]
    assert first["variant"] == "the recipe" and second["variant"] == "--max_steps 3"
    assert first["recall_difference"] == first["specificity_difference"] == 0.0
    assert second["recall_difference"] == pytest.approx(second["recall_at_1_pmi"] - first["recall_at_1_pmi"])
    bench_hub = tmp_path / "runs" / "sftbench" / "sft_settings" / "hub"
    steps = [json.loads((bench_hub / f"sftbench-sft{i}-sft" / "minichatgpt.json").read_text())["log_history"][-1]["step"]
             for i in (0, 1)]
    assert steps == [6, 3]
    assert not (tmp_path / "hub" / "sftbench-sft").exists(), "the run's own hub is not written"
    assert "| --max_steps 3 |" in result.stdout


@pytest.mark.slow
def test_reward_settings_benchmark_trains_each_variant_from_the_sft_model_on_the_same_held_out_pairs(smoke_run,
                                                                                                     tmp_path):
    seed_hub(smoke_run, tmp_path, "rmbench", "tokenizer", "base", "sft")
    recipe = write_recipe(tmp_path / "rmbench.yaml", tmp_path, reward={"labeler": "built", "max_steps": 4,
                                                                       "eval_pairs": 40})
    result = run_cli([ROOT / "bench" / "reward_settings.py", "--config", recipe, "--variants", "",
                      "--max_steps 2 --rejected_weights 4 1 1 1 1", "--json", tmp_path / "rm.json"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "rm.json").read_text())
    first, second = report["variants"]
    assert report["pairs"] == len(first["correct"]) == len(second["correct"]) == 40
    assert second["variant"] == "--max_steps 2 --rejected_weights 4 1 1 1 1"
    assert {"all", "other_conversation", "truncated"} <= set(first["accuracy"])
    assert first["difference"]["all"] == {"difference": 0.0, "se": 0.0}
    assert second["difference"]["all"]["difference"] == pytest.approx(
        second["accuracy"]["all"]["accuracy"] - first["accuracy"]["all"]["accuracy"])
    bench_hub = tmp_path / "runs" / "rmbench" / "reward_settings" / "hub"
    steps = [json.loads((bench_hub / f"rmbench-reward{i}-reward" / "minichatgpt.json").read_text())["log_history"][-1]["step"]
             for i in (0, 1)]
    assert steps == [4, 2]
    assert not (tmp_path / "hub" / "rmbench-reward").exists(), "the run's own hub is not written"
    assert "| --max_steps 2 --rejected_weights 4 1 1 1 1 |" in result.stdout


def test_trained_reward_model_ranks_real_replies_above_degraded_ones_better_than_untrained(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "rm", "tokenizer", "base", "sft")
    degraded = ["truncated", "shuffled", "looped", "generic"]
    recipe = write_recipe(tmp_path / "rm.yaml", tmp_path, data={"max_eval_examples": 100},
                          reward={"labeler": "built", "max_steps": 100, "max_pairs": 1600, "learning_rate": 3e-3,
                                  "rejected_kinds": degraded})
    result = launch("pipeline/reward.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    per_kind = json.loads((tmp_path / "hub" / "rm-reward" / "minichatgpt.json").read_text())["per_kind"]
    assert per_kind["after"]["all"]["pairs"] >= 60
    assert set(per_kind["after"]) <= {"all", *degraded, "other_conversation"}
    assert per_kind["after"]["all"]["accuracy"] >= per_kind["before"]["all"]["accuracy"] + 0.05
    assert per_kind["after"]["all"]["margin"] > 0.05 > abs(per_kind["before"]["all"]["margin"])


def test_the_reward_model_learns_the_labelers_ranking_of_the_sft_models_own_replies(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "ai", "tokenizer", "base", "sft")
    shutil.rmtree(tmp_path / "runs" / "ai", ignore_errors=True)
    recipe = write_recipe(tmp_path / "ai.yaml", tmp_path, reward={"comparison_prompts": 24,
                                                                  "held_out_comparison_prompts": 8,
                                                                  "replies_per_prompt": 3, "tie_margin": 0.001})
    result = launch("pipeline/reward.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "ai" / "comparisons"
    train, held_out = (read_comparisons(folder / f"{split}.jsonl") for split in ("train", "held_out"))
    assert len(train) == 24 and len(held_out) == 8
    assert all(len(row["replies"]) == len(row["scores"]) == len(row["finished"]) == 3 for row in train + held_out)
    assert {row["labeler"] for row in train} == {str(tiny_labelers()["embedder"])}
    assert {row["revision"] for row in train} == {Path(os.path.realpath(tmp_path / "hub" / "ai-sft")).name}
    assert not {row["id"] for row in train} & {row["id"] for row in held_out}, "no held-out prompt is trained on"
    pairs, counts = comparison_pairs(train, 0.001)
    meta = json.loads((tmp_path / "hub" / "ai-reward" / "minichatgpt.json").read_text())
    assert meta["metrics"]["train_pairs"] == counts["pairs"] == len(pairs) > 0
    assert f"{counts['pairs']} pairs of 24 training prompts x 3 replies" in meta["pairs"]
    agreement = meta["agreement"]["after"]
    assert -1 <= agreement["spearman"]["mean"] <= 1 and agreement["all"]["pairs"] > 0
    assert "## Agreement with the labeler" in (tmp_path / "hub" / "ai-reward" / "README.md").read_text()
    # The same SFT model and settings again: the comparisons are read back, not sampled and labelled again.
    result = launch("pipeline/reward.py", recipe, "--max_steps", "2")
    assert result.returncode == 0 and f"comparisons reused from {folder}" in result.stdout


def test_ppo_prompts_end_at_a_user_turn_and_are_left_padded_for_generation(smoke_run):
    from datasets import Dataset

    dialogs = Dataset.from_dict({"messages": [[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]]})
    prompts = prompt_conversations(dialogs, 3, None, seed=0)
    assert sorted(p[-1]["content"] for p in prompts) == ["a", "c"]
    tokenizer = AutoTokenizer.from_pretrained(smoke_run["hub"] / "smoke-sft")
    ids = render_prompts(tokenizer, prompts)
    assert all(tokenizer.decode(i).endswith("<|end|><|assistant|>") for i in ids)
    assert tokenizer.padding_side == "right", "the pushed chat tokenizer pads right; PPO switches to left itself"


def test_history_is_trimmed_from_the_oldest_turn_keeping_system_and_question(smoke_run):
    tokenizer = AutoTokenizer.from_pretrained(smoke_run["hub"] / "smoke-sft")
    messages = [{"role": "system", "content": "sys"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 5} for i in range(9)]
    full, dropped = fit_history(tokenizer, messages, None)
    ids, dropped = fit_history(tokenizer, messages, len(full) - 5)
    text = tokenizer.decode(ids)
    assert dropped >= 1 and text.startswith("<|system|>sys") and "turn 8" in text and "turn 0" not in text


def test_non_finite_reward_stops_ppo_and_pushes_nothing(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "nan", "tokenizer", "base", "sft")
    reward = AutoModelForSequenceClassification.from_pretrained(smoke_run["hub"] / "smoke-reward")
    with torch.no_grad():
        reward.score.weight.fill_(float("nan"))
    reward.save_pretrained(tmp_path / "hub" / "nan-reward")
    AutoTokenizer.from_pretrained(smoke_run["hub"] / "smoke-reward").save_pretrained(tmp_path / "hub" / "nan-reward")
    recipe = write_recipe(tmp_path / "nan.yaml", tmp_path)
    result = launch("pipeline/ppo.py", recipe)
    assert result.returncode != 0
    assert "non-finite" in result.stderr and "nothing pushed" in result.stderr
    assert not (tmp_path / "hub" / "nan-ppo").exists()
