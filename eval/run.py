"""Evaluate a run's models on the held-out splits; writes report.json, report.md and plots.

    python eval/run.py --config recipes/smoke.yaml [--max_prompts 32]

Held-out data is what no stage trained on (pipeline/data.py decides it by content id); the prompts are a seeded sample
spread over all held-out conversations, and every number comes with its standard error. The report goes to
{output_root}/{run_name}/eval/; the numbers also go into each model card's `model-index`, as a new revision.
"""

import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

from eval.metrics import load_metric
from eval.relevance import next_reply_recall, ranking_rows, reply_specificity
from eval.report import render_markdown, write_plots
from eval.stats import standard_error
from pipeline.chat import decoding_config, mmi_rerank
from pipeline.chat_format import END_OF_TURN
from pipeline.common import load_model, load_tokenizer, revision_folder, run_stage, trainer_defaults
from pipeline.data import load_dialogs, sample_pairs, split_eval, text_splits
from pipeline.generation import (
    ended,
    generate_replies,
    generate_reply_ids,
    score_pairs,
    scored_replies,
)
from pipeline.hub import add_evaluation, library_versions, read_metadata
from pipeline.labeler import recipe_labeler
from pipeline.preferences import reward_pairs

logger = logging.getLogger("minichatgpt.eval")

# The policies compared with SFT: the RL model, and the DPO model when the recipe made one.
POLICIES = ("ppo", "dpo")
# Greedy and beam search with the evaluation's settings; `sample` (the chat's default) and `mmi` decode as chat.py
# does, from the model's generation_config.json.
CHAT_STRATEGIES = ("sample", "mmi")


def perplexity_row(model_dir, texts, contexts=None) -> dict:
    result = load_metric("perplexity").compute(predictions=texts, contexts=contexts, model_id=str(model_dir))
    return {"perplexity": result["perplexity"], "se": result["perplexity_se"], "texts": result["texts"],
            "tokens": result["tokens"]}


def reply_stats(replies: list[str]) -> dict:
    distinct = load_metric("distinct_n").compute(predictions=replies, standard_error=True)
    repeated = load_metric("repeated_ngrams").compute(predictions=replies, n=3)
    words = [len(r.split()) for r in replies]
    return {"distinct_2": distinct["distinct_2"], "distinct_2_se": distinct["distinct_2_se"],
            "repeated_3gram_rate": repeated["repeated_ngram_rate"],
            "repeated_3gram_rate_se": repeated["repeated_ngram_rate_se"],
            "mean_words": statistics.fmean(words), "mean_words_se": standard_error(words)}


def decoded_reply_ids(model, tokenizer, prompts, strategy: str, settings: dict, max_prompt_tokens: int,
                      max_new_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rendered prompts and reply token ids as generated, in batches: greedy and beam with `settings`, the chat's
    strategies with the model's generation_config.json defaults (mmi: its candidates per prompt, the best kept)."""
    if strategy not in CHAT_STRATEGIES:
        return generate_reply_ids(model, tokenizer, prompts, max_prompt_tokens=max_prompt_tokens,
                                  max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, **settings)
    config = decoding_config(model.generation_config, strategy, max_new_tokens=max_new_tokens)
    candidates, config.num_return_sequences = config.num_return_sequences, 1
    prompt_ids, reply_ids = generate_reply_ids(model, tokenizer, [p for p in prompts for _ in range(candidates)],
                                               batch_size=64, max_prompt_tokens=max_prompt_tokens,
                                               generation_config=config)
    if candidates == 1:
        return prompt_ids, reply_ids
    groups = range(0, len(reply_ids), candidates)
    return ([prompt_ids[i] for i in groups],
            [mmi_rerank(model, tokenizer, prompt_ids[i], reply_ids[i : i + candidates], config.mmi_lambda)
             for i in groups])


def compare_policies(models: dict, reward_model, labeler, tokenizer, prompts, human_replies, max_prompt_tokens,
                     max_new_tokens, args) -> tuple[dict, dict]:
    """Per policy other than SFT and per decoding: SFT's and the policy's replies judged by the labeler whose
    judgement the reward model learned (its win rate of the policy over SFT), by the independent judges (specificity
    and echo rate, with the paired specificity gain of the policy over SFT), by their form, and by the reward model,
    which scores each reply as it was generated (a reply cut off by the length limit has no end of turn). SFT decodes
    once for all of them."""
    settings_of = {
        "greedy": {"do_sample": False, "repetition_penalty": 1.0},
        "beam": {"do_sample": False, "num_beams": args.num_beams, "repetition_penalty": args.repetition_penalty},
    }
    replies, rows = {}, {policy: {} for policy in models if policy != "sft"}
    for strategy in args.strategies:
        settings = settings_of.get(strategy, {})
        judged, scores, specificity, gold = {}, {}, {}, {}
        for stage, model in models.items():
            set_seed(args.seed)
            prompt_ids, reply_ids = decoded_reply_ids(model, tokenizer, prompts, strategy, settings,
                                                      max_prompt_tokens, max_new_tokens)
            texts, scores[stage] = scored_replies(reward_model, tokenizer, prompt_ids, reply_ids)
            replies[(stage, strategy)] = texts
            if labeler is not None:
                gold[stage] = labeler.score(prompts, texts, ended(tokenizer, reply_ids))
            result = reply_specificity(prompts, texts, human_replies, per_reply=True)
            specificity[stage] = result["scores"]
            judged[stage] = {f"{stage}_specificity": result["specificity"],
                             f"{stage}_specificity_se": result["specificity_se"],
                             f"{stage}_echo_rate": result["echo_rate"], f"{stage}_echo_rate_se": result["echo_rate_se"],
                             **{f"{stage}_{k}": v for k, v in reply_stats(texts).items()}}
        for policy in rows:
            gains = [p - s for p, s in zip(specificity[policy], specificity["sft"])]
            wins = load_metric("win_rate").compute(predictions=scores[policy], references=scores["sft"])
            rows[policy][strategy] = {
                **(gold_verdict(gold[policy], gold["sft"], policy) if gold else {}),
                "specificity_gain": statistics.fmean(gains), "specificity_gain_se": standard_error(gains),
                f"{policy}_win_rate": wins["win_rate"], f"{policy}_win_rate_se": wins["win_rate_se"],
                f"{policy}_mean_reward": wins["mean_score_a"], f"{policy}_mean_reward_se": wins["mean_score_a_se"],
                "sft_mean_reward": wins["mean_score_b"], "sft_mean_reward_se": wins["mean_score_b_se"],
                **judged["sft"], **judged[policy]}
    return rows, replies


def gold_verdict(policy_scores: list[float], sft_scores: list[float], policy: str) -> dict:
    """The labeler's win rate of the policy over SFT (ties count half) and both mean scores, with standard errors."""
    wins = load_metric("win_rate").compute(predictions=policy_scores, references=sft_scores)
    return {f"{policy}_gold_win_rate": wins["win_rate"], f"{policy}_gold_win_rate_se": wins["win_rate_se"],
            f"{policy}_gold": wins["mean_score_a"], f"{policy}_gold_se": wins["mean_score_a_se"],
            "sft_gold": wins["mean_score_b"], "sft_gold_se": wins["mean_score_b_se"]}


def held_out_pairs(recipe, data_args, dialogs):
    """The reward stage's held-out preference pairs as the recipe makes them, and how they were made; `dialogs` is
    the (train, held-out) split of the dialogs."""
    reward_args, reward_config = recipe.parse("reward", defaults=trainer_defaults())
    _, pairs, how = reward_pairs(recipe, data_args, reward_args, reward_config.seed, dialogs)
    return pairs, how


SEED_PROMPT = "how are you ?"


def seed_example(models: dict, tokenizer, max_new_tokens: int) -> dict:
    """The seed project's own example: replies to "how are you ?", greedy and by beam search (5 beams, repetition
    penalty 1.2), from each model."""
    decodings = {"greedy": {"do_sample": False, "repetition_penalty": 1.0},
                 "beam": {"do_sample": False, "num_beams": 5, "repetition_penalty": 1.2}}
    return {stage: {name: generate_replies(model, tokenizer, [[{"role": "user", "content": SEED_PROMPT}]],
                                           max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id, **settings)[0]
                    for name, settings in decodings.items()}
            for stage, model in models.items()}


def reward_accuracy(reward_model, tokenizer, pairs) -> dict:
    """Pairwise accuracy on held-out pairs, overall and per rejected kind, with standard errors."""
    chosen, rejected = score_pairs(reward_model, tokenizer, pairs)
    by_kind = defaultdict(lambda: ([], []))
    for kind, c, r in zip(pairs["kind"], chosen, rejected):
        by_kind[kind][0].append(c)
        by_kind[kind][1].append(r)
    accuracy = load_metric("pairwise_accuracy")
    return {**accuracy.compute(predictions=chosen, references=rejected),
            "per_kind": {kind: accuracy.compute(predictions=c, references=r) for kind, (c, r) in sorted(by_kind.items())}}


def main(recipe, overrides):
    data_args, args = recipe.parse_stage("eval", overrides)
    out = Path(recipe.output_dir("eval"))
    out.mkdir(parents=True, exist_ok=True)
    names = {stage: recipe.hub_path(stage) for stage in ("pretrain", "sft", "reward", "ppo", "dpo")
             if stage != "dpo" or recipe.hub_path(stage).is_dir()}
    paths = {stage: revision_folder(name) for stage, name in names.items()}
    policies = [stage for stage in POLICIES if stage in paths]
    report = {"run": recipe.run_name, "recipe": str(recipe.path), "models": {k: str(v) for k, v in names.items()},
              "library_versions": library_versions(),
              "rl_algorithm": read_metadata(paths["ppo"]).get("algorithm", "ppo")}

    dialogs = load_dialogs(data_args)
    texts = list(text_splits(data_args, dialogs=dialogs)[1]["text"])
    dialog_split = split_eval(dialogs, data_args)
    held_out_dialogs = dialog_split[1]["messages"]
    ppo_args, _ = recipe.parse("ppo", defaults=trainer_defaults())
    sampled = sample_pairs(held_out_dialogs, ppo_args.context_turns, args.max_prompts, data_args.split_seed)
    prompts, human_replies = [history for _, history, _ in sampled], [reply for _, _, reply in sampled]
    rows = ranking_rows(held_out_dialogs, ppo_args.context_turns, max_contexts=args.ranking_contexts,
                        seed=data_args.split_seed)
    report["held_out"] = {"text_documents": len(texts), "conversations": len(held_out_dialogs),
                          "prompts": len(prompts), "prompt_conversations": len({i for i, _, _ in sampled}),
                          "ranking_contexts": len(rows)}
    tokenizer = load_tokenizer(paths["sft"], "SFT model's tokenizer")

    contexts = [tokenizer.apply_chat_template(h, add_generation_prompt=True, tokenize=False) for h in prompts]
    report["perplexity"] = {
        stage: {"held_out_text": perplexity_row(paths[stage], texts),
                "held_out_replies": perplexity_row(paths[stage], [f"{r}{END_OF_TURN}" for r in human_replies], contexts)}
        for stage in ("pretrain", "sft", *(["dpo"] if "dpo" in paths else []))
    }
    reward_model = load_model(paths["reward"], AutoModelForSequenceClassification, "reward model", num_labels=1)
    eval_pairs, _ = held_out_pairs(recipe, data_args, dialog_split)
    report["reward_model"] = reward_accuracy(reward_model, tokenizer, eval_pairs)
    labeler = recipe_labeler(recipe, data_args, dialog_split[0]["messages"])
    if labeler is not None:
        report["labeler"] = labeler.name
        report["reward_model"]["agreement"] = read_metadata(paths["reward"]).get("agreement", {}).get("after")

    budget = AutoConfig.from_pretrained(paths["sft"]).max_position_embeddings - args.max_new_tokens
    models = {stage: load_model(paths[stage], AutoModelForCausalLM, f"{stage} model", tokenizer=tokenizer)
              for stage in ("sft", *policies)}
    comparisons, replies = compare_policies(models, reward_model, labeler, tokenizer, prompts, human_replies, budget,
                                            args.max_new_tokens, args)
    report["seed_example"] = {"prompt": SEED_PROMPT, "replies": seed_example(models, tokenizer, args.max_new_tokens)}
    for policy, comparison in comparisons.items():
        report[f"sft_vs_{policy}"] = comparison
    report["next_reply_ranking"] = {stage: next_reply_recall(paths[stage], tokenizer, rows)
                                    for stage in ("pretrain", "sft", *policies)}
    strategies = list(report["sft_vs_ppo"])
    report["samples"] = [
        {"prompt": p[-1]["content"], **{f"{stage}_{strategy}": replies[(stage, strategy)][i]
                                        for stage in models for strategy in strategies}}
        for i, p in enumerate(prompts[:8])
    ]
    report["plots"] = write_plots(paths, out)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    update_model_cards(recipe, report)

    rl, ranking = report["sft_vs_ppo"], report["next_reply_ranking"]
    print(f"report: {out / 'report.md'}")
    print(f"SFT vs base reply perplexity: {report['perplexity']['sft']['held_out_replies']['perplexity']:.1f} vs "
          f"{report['perplexity']['pretrain']['held_out_replies']['perplexity']:.1f}; reward accuracy "
          f"{report['reward_model']['accuracy']:.3f}; next-reply recall@1 SFT {ranking['sft']['recall_at_1']:.2f}; "
          f"specificity of the chat default (sample) SFT {rl['sample']['sft_specificity']:.3f}, RL "
          f"{rl['sample']['ppo_specificity']:.3f} (gain {rl['sample']['specificity_gain']:+.3f} ± "
          f"{rl['sample']['specificity_gain_se']:.3f}, {len(prompts)} prompts)")
    if "sft_vs_dpo" in report:
        dpo = report["sft_vs_dpo"]["sample"]
        print(f"DPO: specificity {dpo['dpo_specificity']:.3f} (gain {dpo['specificity_gain']:+.3f} ± "
              f"{dpo['specificity_gain_se']:.3f}), reward-model win rate over SFT {dpo['dpo_win_rate']:.2f}")


def update_model_cards(recipe, report: dict):
    """The evaluation's numbers in each model card's `model-index`, as a new revision of the model."""
    ranking, perplexity = report["next_reply_ranking"], report["perplexity"]
    cards = {
        "pretrain": {**{f"{k}_perplexity": v["perplexity"] for k, v in perplexity["pretrain"].items()},
                     "next_reply_recall_at_1": ranking["pretrain"]["recall_at_1"]},
        "sft": {**{f"{k}_perplexity": v["perplexity"] for k, v in perplexity["sft"].items()},
                "next_reply_recall_at_1": ranking["sft"]["recall_at_1"]},
        "reward": {"pairwise_accuracy": report["reward_model"]["accuracy"]},
        **{policy: {**{f"{s}_{k}": v for s, row in report[f"sft_vs_{policy}"].items() for k, v in row.items()
                       if k.startswith(f"{policy}_") and not k.endswith("_se")},
                    "next_reply_recall_at_1": ranking[policy]["recall_at_1"]}
           for policy in POLICIES if f"sft_vs_{policy}" in report},
    }
    for stage, metrics in cards.items():
        add_evaluation(recipe.run.hub_dir, recipe.hub_name(stage), metrics, keep_revisions=recipe.run.keep_revisions)


if __name__ == "__main__":
    run_stage(main, __doc__)
