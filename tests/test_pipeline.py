"""The whole smoke chain through `pipeline/run.py`, then what a user does with its hub."""

import json
import math

import pytest
import yaml
from conftest import (
    CORNELL,
    CORNELL_MINI,
    ROOT,
    WIKITEXT,
    WIKITEXT_MINI,
    run_cli,
    seed_hub,
    shared_corpus,
    write_recipe,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

STAGES = ("tokenizer", "base", "sft", "reward", "ppo")


def test_run_prints_progress_summary_and_chat_command(smoke_run):
    log = smoke_run["log"]
    for number, stage in enumerate(("tokenizer", "pretrain", "sft", "reward", "ppo", "eval"), start=1):
        assert f"[{number}/6] {stage}: starting" in log
        assert f"[{number}/6] {stage}: done in" in log
    assert "chat with it:  python pipeline/chat.py --model" in log
    assert "eval_accuracy=" in log and "win_rate=" in log


def test_every_stage_pushed_safetensors_and_a_model_card(smoke_run):
    for stage in STAGES:
        folder = smoke_run["hub"] / f"smoke-{stage}"
        assert (folder / "README.md").read_text().startswith("---\n"), stage
        assert (folder / "tokenizer.json").is_file()
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")), "no pickle in the hub"
        if stage != "tokenizer":
            assert (folder / "model.safetensors").is_file()
            assert (folder / "config.json").is_file()
    meta = json.loads((smoke_run["hub"] / "smoke-sft" / "minichatgpt.json").read_text())
    assert meta["parent"] == "smoke-base" and meta["stage"] == "sft"
    card = yaml.safe_load((smoke_run["hub"] / "smoke-ppo" / "README.md").read_text().split("---\n")[1])
    assert card["base_model"].endswith("smoke-sft")
    assert card["model-index"][0]["results"][0]["metrics"]
    assert (smoke_run["hub"] / "smoke-base" / "loss_curve.png").stat().st_size > 1000


def test_base_model_generates_through_the_text_generation_pipeline(smoke_run):
    generate = pipeline("text-generation", model=str(smoke_run["hub"] / "smoke-base"))
    out = generate("The history of", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The history of")


def test_chat_models_answer_messages_through_the_pipeline(smoke_run):
    for stage in ("sft", "ppo"):
        chat = pipeline("text-generation", model=str(smoke_run["hub"] / f"smoke-{stage}"))
        assert chat.model.generation_config.no_repeat_ngram_size == 3
        out = chat([{"role": "user", "content": "how are you ?"}], max_new_tokens=8)
        messages = out[0]["generated_text"]
        assert messages[-1]["role"] == "assistant" and isinstance(messages[-1]["content"], str)


def test_reward_model_scores_conversations_as_documented(smoke_run):
    folder = str(smoke_run["hub"] / "smoke-reward")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "how are you ?"},
                                          {"role": "assistant", "content": "good , you ?"}], tokenize=False)
    score = pipeline("text-classification", model=folder, function_to_apply="none")(text)[0]["score"]
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 1
    direct = model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()
    assert abs(score - direct) < 1e-4


def test_eval_report_plots_and_model_index(smoke_run):
    report_dir = smoke_run["runs"] / "smoke" / "eval"
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["perplexity"]) == {"pretrain", "sft"}
    assert 0 <= report["reward_model"]["accuracy"] <= 1
    assert set(report["sft_vs_ppo"]) == {"greedy", "beam", "sample", "mmi"}
    for row in report["sft_vs_ppo"].values():
        for stage in ("sft", "ppo"):
            assert 0 <= row[stage]["echo_rate"] <= 1 and math.isfinite(row[stage]["specificity"])
    assert set(report["next_reply_ranking"]) == {"pretrain", "sft", "ppo"}
    for row in report["next_reply_ranking"].values():
        assert 0 <= row["recall_at_1"] <= 1 and row["candidates"] == 10
    for plot in ("pretrain_loss.png", "sft_loss.png", "reward_accuracy.png", "rl_reward_kl.png", "gold_proxy.png"):
        assert plot in report["plots"] and (report_dir / plot).stat().st_size > 1000
    markdown = (report_dir / "report.md").read_text()
    assert "## Sample replies" in markdown and "| greedy | ppo |" in markdown and "| mmi | sft |" in markdown
    assert "Next-reply ranking on" in markdown and "| sft | " in markdown
    card = yaml.safe_load((smoke_run["hub"] / "smoke-sft" / "README.md").read_text().split("---\n")[1])
    datasets = [r.get("dataset", {}).get("name") for r in card["model-index"][0]["results"]]
    assert "held-out evaluation" in datasets


def test_eval_compares_the_policies_on_the_decodings_the_recipe_names(smoke_run, tmp_path):
    seed_hub(smoke_run, tmp_path, "two", "tokenizer", "base", "sft", "reward", "ppo")
    recipe = write_recipe(tmp_path / "two.yaml", tmp_path, eval={"strategies": ["greedy", "sample"], "max_prompts": 16})
    run_cli(["eval/run.py", "--config", recipe], check=True)
    report = json.loads((tmp_path / "runs" / "two" / "eval" / "report.json").read_text())
    assert list(report["sft_vs_ppo"]) == ["greedy", "sample"] and report["held_out"]["prompts"] == 16
    assert set(report["samples"][0]) == {"prompt", "sft", "ppo"}
    assert set(report["samples"][0]["ppo"]) == {"greedy", "sample"}
    markdown = (tmp_path / "runs" / "two" / "eval" / "report.md").read_text()
    rl = report["rl_algorithm"].upper()
    assert f"| prompt | SFT greedy | {rl} greedy | SFT sample | {rl} sample |\n|---|---|---|---|---|\n" in markdown
    assert "| mmi |" not in markdown and "`mmi`" not in markdown and "| beam |" not in markdown


def test_second_run_skips_finished_stages_and_force_redoes_the_rest(smoke_run):
    result = run_cli(["pipeline/run.py", "--config", smoke_run["recipe"], "--skip_eval"], check=True)
    for stage in ("tokenizer", "pretrain", "sft", "reward", "ppo"):
        assert f"{stage}: skipped" in result.stdout
    before = (smoke_run["hub"] / "smoke-ppo" / "minichatgpt.json").read_text()
    result = run_cli(["pipeline/run.py", "--config", smoke_run["recipe"], "--force", "ppo", "--skip_eval"],
                     check=True)
    assert "sft: skipped" in result.stdout and "[5/5] ppo: done" in result.stdout
    assert (smoke_run["hub"] / "smoke-ppo" / "minichatgpt.json").read_text() != before
    revisions = [p for p in (smoke_run["hub"] / ".revisions" / "smoke-ppo").iterdir() if p.is_dir()]
    assert len(revisions) >= 2, "the replaced version is kept next to the current one"


@pytest.mark.parametrize("corpora", [
    "repository",
    pytest.param("shared", marks=pytest.mark.slow),
])
def test_the_seeds_flow_pretrains_on_wikitext_then_chats_on_movie_dialogs_with_beam_search(tmp_path, corpora):
    text, dialogs = ((WIKITEXT_MINI, CORNELL_MINI) if corpora == "repository"
                     else (shared_corpus(WIKITEXT), shared_corpus(CORNELL)))
    smoke = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "recipes" / "wikigpt-movie.yaml").read_text())
    # The shipped recipe's flow and decoding at the smoke recipe's size.
    recipe = write_recipe(tmp_path / "wikigpt-movie.yaml", tmp_path, base="wikigpt-movie",
                          data={"text_sources": [f"wikitext:{text}"], "dialog_sources": [f"cornell:{dialogs}"],
                                "eval_fraction": 0.2, "text_unit": "line"},
                          **{section: smoke[section] for section in ("model", "tokenizer", "pretrain", "sft", "ppo")},
                          reward={**smoke["reward"], "comparison_prompts": 16, "held_out_comparison_prompts": 4},
                          eval={**shipped["eval"], "max_prompts": 6, "max_new_tokens": 12, "ranking_contexts": 4})
    result = run_cli(["pipeline/run.py", "--config", recipe], timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "wikigpt-movie" / "eval" / "report.json").read_text())
    assert list(report["sft_vs_ppo"]) == ["greedy", "beam", "sample"] and report["rl_algorithm"] == "ppo"
    example = report["seed_example"]
    assert example["prompt"] == "how are you ?" and set(example["replies"]) == {"sft", "ppo"}
    assert all(set(replies) == {"greedy", "beam"} for replies in example["replies"].values())
    closing = result.stdout[result.stdout.index('"how are you ?"'):]
    assert all(f"{stage:4} {decoding:7} " in closing for stage in ("sft", "ppo") for decoding in ("greedy", "beam"))
    assert "## The seed's example" in (tmp_path / "runs" / "wikigpt-movie" / "eval" / "report.md").read_text()
