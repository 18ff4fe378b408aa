"""The stages' own argument dataclasses, one per recipe section, beside TRL's and transformers' config classes: each
field's default and help string (docs/recipes.md lists them all)."""

from dataclasses import dataclass, field
from typing import Literal

from minichatgpt.feedback.labeler import DEFAULT_LABELER
from minichatgpt.generation import STRATEGIES
from minichatgpt.hub import DEFAULT_KEEP_REVISIONS


def require_at_least(arguments, minimums: dict[str, float]):
    """A recipe value below what its setting can mean is refused, naming it (a ValueError: one line from parsing)."""
    for name, least in minimums.items():
        value = getattr(arguments, name)
        if value is not None and value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")


@dataclass
class DataArguments:
    text_sources: list[str] = field(
        default_factory=lambda: ["chitchat"],
        metadata={"help": "Pretraining/tokenizer text: files, folders, globs, 'wikitext:<file>', 'hub:<id>[:<config>]', "
                  "'disk:<folder>', 'chitchat', or 'chat:<dialog source>' (its conversations in the chat template). See "
                  "docs/data.md."},
    )
    dialog_sources: list[str] = field(
        default_factory=lambda: ["chitchat"],
        metadata={"help": "Dialogs for SFT, reward pairs and PPO prompts: 'chitchat', 'cornell:<folder>', chat or "
                  "prompt/completion JSONL/JSON/Parquet files, 'hub:<id>[:<config>]'."},
    )
    preference_sources: list[str] = field(
        default_factory=list,
        metadata={"help": "Preference files {prompt, chosen, rejected}; empty means pairs are built from the dialogs."},
    )
    text_column: str = field(default="text", metadata={"help": "Text column of JSON/CSV/Parquet/disk/hub sources."})
    encoding: str = field(
        default="auto",
        metadata={"help": "Encoding of text, JSON, CSV and Cornell files: 'auto' (UTF-8; ISO-8859-1 for cornell: "
                  "folders, the original corpus's encoding), utf-8, latin-1 or another Python codec name."},
    )
    text_unit: Literal["paragraph", "line", "file"] = field(
        default="paragraph",
        metadata={"help": "One document per paragraph (blank-line separated), per line, or per file in .txt/.raw/.md."},
    )
    max_documents_per_source: int | None = field(
        default=None, metadata={"help": "Keep at most this many documents/conversations of each source."}
    )
    eval_fraction: float = field(
        default=0.05, metadata={"help": "Share of documents and conversations held out, drawn from each one's content "
                                "id: the same in every stage, whatever the mix of sources."})
    max_eval_examples: int = field(
        default=200, metadata={"help": "Held-out documents (and conversations) evaluated; held-out ones past it are "
                               "used nowhere."})
    split_seed: int = field(
        default=1234, metadata={"help": "Seed of the held-out draw and of the samples of held-out prompts."})
    max_bad_fraction: float = field(
        default=0.1, metadata={"help": "Fail when more than this share of a source's rows is malformed."}
    )

    def __post_init__(self):
        require_at_least(self, {"max_documents_per_source": 1, "max_eval_examples": 1, "max_bad_fraction": 0})
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be above 0 and below 1, got {self.eval_fraction}")


@dataclass
class ModelShapeArguments:
    n_layer: int = field(default=4, metadata={"help": "Transformer blocks."})
    n_embd: int = field(default=256, metadata={"help": "Width of the residual stream."})
    n_head: int = field(default=4, metadata={"help": "Attention heads; must divide n_embd."})
    n_positions: int = field(default=256, metadata={"help": "Context length in tokens."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout of embeddings, attention and residuals."})


@dataclass
class TokenizerArguments:
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair count for a BPE merge."})


@dataclass
class PretrainArguments:
    pad_vocab_to_multiple_of: int = field(
        default=64, metadata={"help": "Round the embedding matrix up to a multiple of this (faster matmuls)."}
    )
    max_eval_blocks: int | None = field(default=None, metadata={"help": "Cap on held-out blocks evaluated."})
    attention: Literal["sdpa_causal", "matmul_causal", "sdpa"] | None = field(
        default=None,
        metadata={"help": "Attention kernel (minichatgpt/model/attention.py). 'sdpa_causal': SDPA's causal kernel with no mask "
                  "(FlashAttention/cuDNN on GPUs, also under torch.compile); 'matmul_causal': two matmuls and a "
                  "softmax masked causally in place, faster on CPUs in bf16; both valid because packed blocks "
                  "have no padding. 'sdpa': transformers' default, with a mask. Default: matmul_causal for bf16 on a "
                  "CPU, sdpa_causal elsewhere."},
    )
    loss_only_in_training: bool = field(
        default=True,
        metadata={"help": "Training forwards return only the loss: no full-vocabulary logits copied to fp32 and no "
                  "key/value cache built every step. Evaluation and generation are unchanged."},
    )
    chunked_loss: bool | None = field(
        default=None,
        metadata={"help": "Compute the training loss a chunk of rows at a time in fp32 from the logits as the model "
                  "made them (minichatgpt/model/loss.py) instead of over one fp32 copy of them all. Default: on "
                  "without an accelerator, where the quickstart pretrains 1.2x faster; not measured on GPUs."},
    )
    optimizer: Literal["adamw", "muon"] = field(
        default="adamw",
        metadata={"help": "'muon': torch.optim.Muon on the blocks' 2-D weights, AdamW on embeddings, head, norms and "
                  "biases, at one learning rate and schedule (minichatgpt/model/optimizers.py); 'adamw': the trainer's `optim`."},
    )


@dataclass
class SFTArguments:
    base_model: str | None = field(
        default=None, metadata={"help": "Model folder to fine-tune; default {hub_dir}/{run_name}-base."}
    )
    max_turns: int = field(
        default=8, metadata={"help": "Long conversations are cut into windows of at most this many turns."}
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: ["hi , how are you ?", "what do you do for fun ?", "do you like movies ?"],
        metadata={"help": "Prompts decoded greedily at the end and shown on the model card."},
    )


@dataclass
class RewardArguments:
    labeler: str = field(
        default=DEFAULT_LABELER,
        metadata={"help": "Who judges the pairs the reward model learns. 'all-mpnet-base-v2' (AI feedback): K replies "
                  "of the SFT model per training prompt, scored by that sentence-embedding judge and its rules "
                  "(minichatgpt/feedback/labeler.py); a sentence-transformers or sequence-classification reward model (folder or "
                  "hub id): the same with that judge; 'built': no labeler, a real reply against a synthetic corruption "
                  "of it (rejected_kinds). data.preference_sources, when set, replaces the labeler with those files "
                  "(people's votes and labels)."},
    )
    replies_per_prompt: int = field(
        default=4, metadata={"help": "Replies sampled from the SFT model per prompt for the labeler to rank (K)."})
    comparison_prompts: int = field(
        default=1200, metadata={"help": "Training prompts whose replies the labeler ranks."})
    held_out_comparison_prompts: int = field(
        default=300, metadata={"help": "Held-out prompts whose replies the labeler ranks, to measure the reward model."})
    tie_margin: float = field(
        default=0.05, metadata={"help": "Pairs whose labeler scores differ by less than this are ties and dropped "
                                "(in the labeler's units: cosine for an embedding judge)."})
    margin_scale: float = field(
        default=1.0, metadata={"help": "RewardTrainer's loss asks the reward model to score the chosen reply above "
                               "the rejected one by the labeler's margin times this (0: by any amount)."})
    rejected_kinds: list[str] = field(
        default_factory=lambda: ["other_conversation", "truncated", "shuffled", "looped", "generic"],
        metadata={"help": "How rejected replies are made for built pairs (labeler: built, or built_per_preference)."},
    )
    rejected_weights: list[float] | None = field(
        default=None, metadata={"help": "Mix of rejected_kinds (same order); default: equal."}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Cap on training pairs built from the dialogs."})
    built_per_preference: float = field(
        default=0.0, metadata={"help": "Pairs built from the dialogs added to training per labelled or preference "
                                       "pair (0: none)."}
    )
    eval_pairs: int = field(default=1000, metadata={"help": "Cap on held-out built pairs the accuracy is measured on."})
    context_turns: int | None = field(
        default=None, metadata={"help": "Turns before the reply that the reward model sees, the last the user's; "
                                "default: ppo.context_turns, the contexts the RL stage gives it to score."}
    )

    def __post_init__(self):
        require_at_least(self, {"replies_per_prompt": 2, "comparison_prompts": 1, "held_out_comparison_prompts": 1,
                                "tie_margin": 0, "max_pairs": 1, "built_per_preference": 0, "eval_pairs": 1,
                                "context_turns": 1})


@dataclass
class PPOArguments:
    max_prompt_length: int = field(default=96, metadata={"help": "Prompt tokens kept (oldest turns dropped first)."})
    context_turns: int = field(default=3, metadata={"help": "Turns of conversation in a prompt, ending at a user's."})
    max_prompts: int | None = field(default=None, metadata={"help": "Cap on training prompts."})
    compare_prompts: int = field(default=64, metadata={"help": "Held-out prompts for the final SFT vs PPO comparison."})
    guard_prompts: int = field(default=32, metadata={"help": "Fixed prompts decoded at each log to watch for collapse."})
    max_kl: float = field(default=20.0, metadata={"help": "Stop when the KL to the SFT policy exceeds this."})
    algorithm: Literal["ppo", "rloo", "grpo"] = field(
        default="ppo", metadata={"help": "ppo: trl.experimental.ppo.PPOTrainer; rloo: trl.RLOOTrainer (REINFORCE with a "
                                 "leave-one-out baseline, no value model); grpo: trl.GRPOTrainer (advantages "
                                 "standardised within each prompt's group of replies, no value model). All push "
                                 "{run_name}-ppo."}
    )
    rloo_num_generations: int = field(
        default=4, metadata={"help": "RLOO: replies sampled per prompt; each is judged against the mean of the others."}
    )
    grpo_num_generations: int = field(
        default=4, metadata={"help": "GRPO: replies sampled per prompt; each is judged against the group's mean and "
                             "standard deviation."}
    )
    grpo_loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = field(
        default="dapo", metadata={"help": "GRPO: GRPOConfig.loss_type, how token losses are averaged (dapo: over the "
                                  "batch's reply tokens; grpo: per reply, then over replies; dr_grpo: by a constant)."}
    )
    reward_model_weight: float = field(default=1.0, metadata={"help": "Weight of the reward model's score."})
    normalize_reward_model: bool = field(
        default=True, metadata={"help": "Standardise the reward model's score by its mean and std over warm-up "
                                "rollouts of the SFT policy (reward_scale_rollouts), gathered from every process."}
    )
    reward_scale_rollouts: int = field(
        default=256, metadata={"help": "Warm-up replies of the SFT policy, one per training prompt, sampled as the "
                               "rollouts are, whose reward-model scores set the standardisation."}
    )
    reward_model_clip: float | None = field(
        default=None, metadata={"help": "Clip the standardised reward-model score to [-clip, clip], so that no reply "
                                "earns more than that many standard deviations by exploiting the reward model."}
    )
    repetition_weight: float = field(
        default=1.0, metadata={"help": "Weight of the repetition penalty: minus the share of repeated token n-grams."}
    )
    repetition_ngram: int = field(default=3, metadata={"help": "n of the repetition penalty's n-grams."})
    relevance_weight: float = field(
        default=0.5, metadata={"help": "Weight of the relevance bonus: per-token log p(reply | context) - log p(reply | "
                               "empty prompt) under the SFT model."}
    )
    gold_prompts: int = field(
        default=64, metadata={"help": "Held-out prompts replied to during RL and judged by the labeler (gold) and the "
                              "reward model (proxy), logged against KL to SFT."})
    gold_every: int | None = field(
        default=None, metadata={"help": "Steps between gold/proxy measurements; default: 8 measurements a run."})
    echo_weight: float = field(
        default=0.0, metadata={"help": "Weight of the echo penalty: -1 for a reply that echoes the user's last turn (the "
                               "labeler's rule)."})
    kl_target: float | None = field(
        default=None, metadata={"help": "KL budget: above it kl_coef grows, below it shrinks (adaptive KL controller); "
                                "None keeps kl_coef fixed."}
    )
    kl_adapt_rate: float = field(
        default=0.1, metadata={"help": "Largest relative change of kl_coef per log step under kl_target."}
    )

    def __post_init__(self):
        require_at_least(self, {"max_prompt_length": 1, "context_turns": 1, "max_prompts": 1, "compare_prompts": 1,
                                "gold_prompts": 1, "gold_every": 1})


@dataclass
class DPOArguments:
    max_pairs: int | None = field(
        default=None, metadata={"help": "Cap on training pairs built from the dialogs; default: reward.max_pairs. The "
                                "pairs are the reward stage's: the labeler's comparisons, people's labels or built pairs."}
    )
    guard_prompts: int = field(
        default=32, metadata={"help": "Held-out prompts replied to greedily at each log to watch for loops and collapse."})


@dataclass
class EvalArguments:
    max_prompts: int = field(
        default=500, metadata={"help": "Held-out prompts decoded per policy and strategy, sampled over all held-out "
                               "conversations; 500 puts the standard error of a specificity gain near 0.02, so that "
                               "a gain of 0.05 is at least two of them."})
    max_new_tokens: int = field(default=32, metadata={"help": "Reply length cap."})
    strategies: list[str] = field(
        default_factory=lambda: list(STRATEGIES),
        metadata={"help": "Decodings the policies are compared on: greedy, beam, sample (the chat's default, always "
                  "included) and mmi (sampled candidates reranked: as many generations as candidates per prompt).",
                  "choices": STRATEGIES},
    )
    num_beams: int = field(default=4, metadata={"help": "Beams for the beam-search comparison."})
    repetition_penalty: float = field(default=1.2, metadata={"help": "Repetition penalty used with beam search."})
    ranking_contexts: int = field(
        default=200, metadata={"help": "Held-out contexts for next-reply recall@1 (each with 10 candidate replies)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled decodings (chat default and mmi)."})

    def __post_init__(self):
        if "sample" not in self.strategies:
            raise ValueError(f"strategies must include sample, the chat's default decoding, got {self.strategies}")


@dataclass
class RecipeArguments:
    run_name: str | None = field(default=None, metadata={"help": "Run name; default: the recipe file's name."})
    hub_dir: str = field(default="hub", metadata={"help": "Local model hub folder."})
    output_root: str = field(default="runs", metadata={"help": "Trainer checkpoints go to {output_root}/{run_name}/{stage}."})
    accelerate_config: str = field(default="accelerate_config.yaml", metadata={"help": "Used by pipeline/run.py."})
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto",
        metadata={"help": "How the training stages compute: 'auto' is bf16 autocast where the machine has native bf16 "
                  "(a GPU that supports it, a CPU with AVX-512 BF16 or AMX) and fp32 elsewhere; weights stay fp32. "
                  "A stage's own `bf16:` key (or `--bf16` on its command line) overrides it."},
    )
    keep_revisions: int = field(
        default=DEFAULT_KEEP_REVISIONS,
        metadata={"help": "Older revisions of each hub model kept under {hub_dir}/.revisions/{name}/ besides the "
                  "current one; older ones are deleted after each push. 0 keeps only the current one, and a process "
                  "loading the model while it is replaced may then find its files gone."},
    )
