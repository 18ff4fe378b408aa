"""The DPO stage end to end on the smoke models: a chat model and its card with held-out preference accuracy, a bad
`dpo:` key refused before any work, and `pipeline/run.py` running it only for a recipe with a `dpo:` section."""

import json

import pytest
import yaml
from conftest import launch, run_cli, seed_hub, write_recipe
from transformers import pipeline

DPO = {"max_steps": 10, "per_device_train_batch_size": 8, "learning_rate": 1.0e-3, "max_length": 128,
       "logging_steps": 5}


def test_dpo_pushes_a_chat_model_with_held_out_preference_accuracy(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "dpo")
    # Built pairs, whose kinds a few steps learn; the labeler's comparisons reach DPO in the chain test below.
    recipe = write_recipe(tmp_path / "dpo.yaml", tmp_path, dpo=DPO, reward={"labeler": "built"})
    result = launch("pipeline/dpo.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "hub" / "dpo-dpo"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    meta = json.loads((folder / "minichatgpt.json").read_text())
    metrics = meta["metrics"]
    assert meta["stage"] == "dpo" and meta["parent"] == "dpo-sft" and meta["beta"] == 0.1
    assert "pairs" in json.loads(meta["fingerprint"])["shared"], "redone when the reward stage's pairs change"
    # The held-out pairs are the reward stage's, built from the held-out conversations, every rejected kind counted.
    assert meta["per_kind"]["all"]["pairs"] == sum(row["pairs"] for kind, row in meta["per_kind"].items()
                                                   if kind != "all")
    assert {"generic", "looped"} <= set(meta["per_kind"])
    assert metrics["eval_preference_accuracy"] > 0.5 and metrics["eval_margin"] > 0
    assert 0 <= metrics["eval_sft_likelihood_accuracy"] <= 1
    assert "dpo summary: eval_preference_accuracy=" in result.stdout
    # The RL stage's guards watched DPO's greedy replies at each of its two logs, on the implicit reward margin.
    history = meta["guards"]["history"]
    assert [row["step"] for row in history] == [5, 10]
    assert all(0 <= row["repeated_3gram"] <= 1 and 0 < row["unique_replies"] <= 1 and row["kl"] is None
               for row in history)
    assert [row["score"] for row in history] == [log["rewards/margins"] for log in meta["log_history"]
                                                 if "rewards/margins" in log]
    card = (folder / "README.md").read_text()
    assert "Guards, on the greedy replies to 32 held-out prompts" in card
    assert "TRL `DPOTrainer` (loss\nsigmoid, beta 0.1)" in card and "| all | " in card
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == str(tmp_path / "hub" / "dpo-sft")
    assert (folder / "training_curve.png").is_file()
    trained = next(log for log in meta["log_history"] if "loss" in log)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(trained)
    chat = pipeline("text-generation", model=str(folder))
    out = chat([{"role": "user", "content": "how are you ?"}], max_new_tokens=8)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_bad_dpo_key_is_one_line_and_pushes_nothing(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "typo")
    recipe = write_recipe(tmp_path / "typo.yaml", tmp_path, dpo={"betta": 0.2})
    for script in ("pipeline/dpo.py", "pipeline/run.py"):
        result = run_cli([script, "--config", recipe])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
            f"error: {recipe}: unknown key 'dpo.betta' (did you mean 'beta'?); a 'dpo' section takes the fields of "
            "DPOArguments/DPOConfig"]
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["typo-base", "typo-reward", "typo-sft",
                                                                    "typo-tokenizer"]
    assert [p.name for p in (tmp_path / "runs" / "typo").iterdir()] == ["comparisons"], "only what seed_hub copied"


@pytest.mark.slow
def test_run_adds_dpo_for_a_recipe_with_its_section_and_the_evaluation_compares_it(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "chain", "tokenizer", "base", "sft", "reward", "ppo")
    recipe = write_recipe(tmp_path / "chain.yaml", tmp_path, dpo=DPO)
    result = run_cli(["pipeline/run.py", "--config", recipe], check=True, timeout=1200)
    for stage in ("tokenizer", "pretrain", "sft", "reward", "ppo"):
        assert f"{stage}: skipped" in result.stdout
    assert "[6/7] dpo: done in" in result.stdout and "[7/7] eval: done in" in result.stdout
    assert "eval_preference_accuracy=" in result.stdout.split("stage ")[-1]
    report = json.loads((tmp_path / "runs" / "chain" / "eval" / "report.json").read_text())
    assert set(report["sft_vs_dpo"]) == set(report["sft_vs_ppo"]) == {"greedy", "beam", "sample", "mmi"}
    for row in report["sft_vs_dpo"].values():
        assert 0 <= row["win_rate"] <= 1 and "specificity" in row["sft"] and "specificity_gain_se" in row
    assert {"sft", "ppo", "dpo"} <= set(report["next_reply_ranking"]) and "dpo" in report["perplexity"]
    markdown = (tmp_path / "runs" / "chain" / "eval" / "report.md").read_text()
    assert "## DPO vs SFT" in markdown and "| greedy | DPO |" in markdown, "the labeler judges DPO too"
    meta = json.loads((tmp_path / "hub" / "chain-dpo" / "minichatgpt.json").read_text())
    assert set(meta["per_kind"]) == {"all", "labeler"}, "DPO trains on the labeler's comparisons, as the reward model"
    card = yaml.safe_load((tmp_path / "hub" / "chain-dpo" / "README.md").read_text().split("---\n")[1])
    results = card["model-index"][0]["results"]
    assert any(r.get("dataset", {}).get("name") == "held-out evaluation" for r in results)
    result = run_cli(["pipeline/run.py", "--config", recipe, "--skip_eval"], check=True)
    assert "[6/6] dpo: skipped" in result.stdout
