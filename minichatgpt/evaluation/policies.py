"""Comparisons of policies on held-out prompts: replies under each decoding, the labeler's and the reward model's
verdicts, the seed's example, the reward model's accuracy."""

import statistics
from collections import defaultdict

from transformers import set_seed

from minichatgpt.chat import decoding_config, mmi_rerank
from minichatgpt.data.chat_format import END_OF_TURN
from minichatgpt.data.preferences import reward_pairs
from minichatgpt.evaluation.metrics import load_metric
from minichatgpt.evaluation.relevance import reply_specificity
from minichatgpt.evaluation.stats import standard_error
from minichatgpt.generation import ended, generate_replies, generate_reply_ids, score_pairs, scored_replies
from minichatgpt.training.defaults import trainer_defaults

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


def compare_policies(models: dict, reward_model, labeler, tokenizer, prompts, max_prompt_tokens, max_new_tokens,
                     strategies=("greedy",), seed: int = 0, beam: dict | None = None, human_replies=None
                     ) -> tuple[dict, dict]:
    """Per policy other than SFT and per decoding: SFT's and the policy's replies judged by the labeler whose
    judgement the reward model learned (its win rate of the policy over SFT), by the independent judges when the
    `human_replies` to the prompts are given (specificity and echo rate, with the paired specificity gain of the
    policy over SFT), by their form, and by the reward model, which scores each reply as it was generated (a reply cut
    off by the length limit has no end of turn). SFT decodes once for all of them; `beam` holds beam search's
    `num_beams` and `repetition_penalty`.

    Returns, per policy and decoding, the verdicts on the pair (`gold_win_rate`, `specificity_gain`, `win_rate`, each
    with its `_se`) and, under "sft" and under the policy's name, each model's own numbers (`gold`, `mean_reward`,
    `specificity`, `echo_rate`, `distinct_2`, `repeated_3gram_rate`, `mean_words`, each with its `_se`); and the
    replies by (model, decoding)."""
    settings_of = {"greedy": {"do_sample": False, "repetition_penalty": 1.0},
                   "beam": {"do_sample": False, **(beam or {})}}
    replies, rows = {}, {policy: {} for policy in models if policy != "sft"}
    win_rate = load_metric("win_rate")
    for strategy in strategies:
        settings = settings_of.get(strategy, {})
        judged, scores, specificity, gold = {}, {}, {}, {}
        for stage, model in models.items():
            set_seed(seed)
            prompt_ids, reply_ids = decoded_reply_ids(model, tokenizer, prompts, strategy, settings,
                                                      max_prompt_tokens, max_new_tokens)
            texts, scores[stage] = scored_replies(reward_model, tokenizer, prompt_ids, reply_ids)
            replies[(stage, strategy)] = texts
            if labeler is not None:
                gold[stage] = labeler.score(prompts, texts, ended(tokenizer, reply_ids))
            judged[stage] = {}
            if human_replies is not None:
                result = reply_specificity(prompts, texts, human_replies, per_reply=True)
                specificity[stage] = result["scores"]
                judged[stage] = {key: result[key] for key in ("specificity", "specificity_se", "echo_rate",
                                                              "echo_rate_se")}
            judged[stage].update(reply_stats(texts))
        for policy in rows:
            row, per_model = {}, {"sft": {}, policy: {}}
            if gold:
                verdict = win_rate.compute(predictions=gold[policy], references=gold["sft"])
                row.update(gold_win_rate=verdict["win_rate"], gold_win_rate_se=verdict["win_rate_se"])
                per_model[policy].update(gold=verdict["mean_score_a"], gold_se=verdict["mean_score_a_se"])
                per_model["sft"].update(gold=verdict["mean_score_b"], gold_se=verdict["mean_score_b_se"])
            if specificity:
                gains = [p - s for p, s in zip(specificity[policy], specificity["sft"])]
                row.update(specificity_gain=statistics.fmean(gains), specificity_gain_se=standard_error(gains))
            wins = win_rate.compute(predictions=scores[policy], references=scores["sft"])
            row.update(win_rate=wins["win_rate"], win_rate_se=wins["win_rate_se"])
            per_model[policy].update(mean_reward=wins["mean_score_a"], mean_reward_se=wins["mean_score_a_se"])
            per_model["sft"].update(mean_reward=wins["mean_score_b"], mean_reward_se=wins["mean_score_b_se"])
            rows[policy][strategy] = {**row, **{stage: {**values, **judged[stage]}
                                                for stage, values in per_model.items()}}
    return rows, replies


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


def perplexities(paths: dict, tokenizer, texts: list[str], prompts, human_replies: list[str]) -> dict:
    """Perplexity of held-out text and of the human replies to the prompts (each after its rendered context), for the
    base, SFT and DPO models."""
    contexts = [tokenizer.apply_chat_template(h, add_generation_prompt=True, tokenize=False) for h in prompts]
    replies = [f"{r}{END_OF_TURN}" for r in human_replies]
    return {stage: {"held_out_text": perplexity_row(paths[stage], texts),
                    "held_out_replies": perplexity_row(paths[stage], replies, contexts)}
            for stage in ("pretrain", "sft", *(["dpo"] if "dpo" in paths else []))}


def sample_table(prompts, replies: dict, stages, strategies, shown: int = 8) -> list[dict]:
    """The first `shown` prompts with every model's reply under every decoding: {"prompt", stage: {strategy}}."""
    return [{"prompt": p[-1]["content"], **{stage: {strategy: replies[(stage, strategy)][i] for strategy in strategies}
                                            for stage in stages}}
            for i, p in enumerate(prompts[:shown])]


def card_metrics(row: dict, policy: str) -> dict:
    """One decoding's comparison as a model card's flat metrics: the verdicts on the pair under the policy's name
    (`ppo_win_rate`), each model's own numbers under its name (`sft_mean_words`, `ppo_mean_words`)."""
    flat = {f"{policy}_{key}": value for key, value in row.items() if not isinstance(value, dict)}
    flat.update({f"{stage}_{key}": value for stage in ("sft", policy) for key, value in row[stage].items()})
    return flat
