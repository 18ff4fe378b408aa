"""The RL stage's reward, one definition for PPO, RLOO and GRPO: the reward model's score plus parts that are
computed, not learned, so that a policy cannot buy reward-model score with loops, endless replies or replies to nothing:

- `reward_model`: the reward model's score of the whole conversation, optionally standardised by its mean and spread
  over warm-up rollouts of the SFT policy (`set_reward_model_scale`), so the other weights are in units of that
  spread, and clipped, so that a reply that exploits the reward model earns no more than a few spreads;
- `repetition`: minus the share of repeated token n-grams in the reply (`trl.rewards.get_repetition_penalty_reward`);
- `end_of_turn`: -1 for a reply that never wrote the end-of-turn token (cut off by the length limit);
- `relevance`: per-token pointwise mutual information of reply and context under the frozen SFT model,
  log p(reply | context) - log p(reply | empty prompt): positive when the context explains the reply;
- `echo`: -1 for a reply that echoes the user's last turn, the labeler's own rule (minichatgpt/feedback/labeler.py): an echo fits
  its context by construction, and the labeler's comparisons of SFT replies hold too few echoes for the reward model
  to learn that it pays nothing.

Every part scores (prompt token ids, reply token ids) pairs: the prompt as the chat template renders it with the
generation prompt, the reply as the policy wrote it, end-of-turn token included when it stopped.
"""

import math

import torch
from transformers.modeling_outputs import BaseModelOutput
from trl.rewards import get_repetition_penalty_reward

from minichatgpt.data.chat_format import END_OF_TURN, USER_MARKER
from minichatgpt.errors import PipelineError
from minichatgpt.feedback.labeler import is_echo
from minichatgpt.generation import score_sequences, token_pmi_scores

PARTS = ("reward_model", "repetition", "end_of_turn", "relevance", "echo")


def end_of_turn_rewards(replies: list[list[int]], end_token_id: int) -> list[float]:
    return [0.0 if end_token_id in reply else -1.0 for reply in replies]


def echo_rewards(tokenizer, prompts: list[list[int]], replies: list[list[int]]) -> list[float]:
    """-1 for each reply that echoes the last user turn of its rendered prompt, else 0."""
    user_turns = [tokenizer.decode(p).rsplit(USER_MARKER, 1)[-1].split(END_OF_TURN, 1)[0] for p in prompts]
    texts = tokenizer.batch_decode(replies, skip_special_tokens=True)
    return [-1.0 if is_echo(text, user) else 0.0 for text, user in zip(texts, user_turns)]


class CompositeReward:
    """The weighted sum of the parts; `parts` gives each part's scores, `__call__` the weighted total."""

    def __init__(self, reward_model, reference_model, tokenizer, weights: dict[str, float], end_token_id: int,
                 repetition_ngram: int = 3, normalize_reward_model: bool = True,
                 reward_model_clip: float | None = None):
        unknown = set(weights) - set(PARTS)
        if unknown:
            raise PipelineError(f"unknown reward parts {sorted(unknown)}; expected some of {list(PARTS)}")
        self.reward_model, self.reference_model, self.tokenizer = reward_model, reference_model, tokenizer
        self.weights = {part: weight for part, weight in weights.items() if weight}
        self.end_token_id = end_token_id
        self.repetition = get_repetition_penalty_reward(ngram_size=repetition_ngram, max_penalty=-1.0)
        self.normalize_reward_model, self.reward_model_clip = normalize_reward_model, reward_model_clip
        self.reward_model_scale: tuple[float, float] | None = None

    def part(self, name: str, prompts: list[list[int]], replies: list[list[int]]) -> list[float]:
        if name == "reward_model":
            values = self._reward_model_part(prompts, replies)
        elif name == "repetition":
            values = self.repetition(completion_ids=replies)
        elif name == "end_of_turn":
            values = end_of_turn_rewards(replies, self.end_token_id)
        elif name == "relevance":
            values = token_pmi_scores(self.reference_model, self.tokenizer, prompts, replies, mmi_lambda=1.0)
        elif name == "echo":
            values = echo_rewards(self.tokenizer, prompts, replies)
        else:
            raise PipelineError(f"unknown reward part '{name}'; expected one of {list(PARTS)}")
        bad = sum(not math.isfinite(v) for v in values)
        if bad:
            raise PipelineError(f"non-finite {name} reward for {bad} of {len(values)} replies; stopped, nothing pushed "
                                "(check the reward model, lower the learning rate)")
        return values

    def parts(self, prompts: list[list[int]], replies: list[list[int]]) -> dict[str, list[float]]:
        return {name: self.part(name, prompts, replies) for name in self.weights}

    def __call__(self, prompts: list[list[int]], replies: list[list[int]], skip: tuple[str, ...] = ()) -> list[float]:
        totals = [0.0] * len(replies)
        for name, weight in self.weights.items():
            if name not in skip:
                totals = [t + weight * v for t, v in zip(totals, self.part(name, prompts, replies))]
        return totals

    def reward_model_scores(self, prompts: list[list[int]], replies: list[list[int]]) -> list[float]:
        """The reward model's raw scores of the replies (prompt and reply as token ids)."""
        return score_sequences(self.reward_model, [p + r for p, r in zip(prompts, replies)],
                               self.tokenizer.pad_token_id)

    def set_reward_model_scale(self, scores: list[float]):
        """Standardise the reward model's score by the mean and spread of `scores`: the SFT policy's warm-up
        rollouts, gathered from every process, so that every process scales alike."""
        bad = sum(not math.isfinite(s) for s in scores)
        if bad or len(scores) < 2:
            raise PipelineError(f"non-finite reward_model score for {bad} of {len(scores)} warm-up replies; stopped, "
                                "nothing pushed (check the reward model)")
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        self.reward_model_scale = (mean, max(std, 1e-3))

    def _reward_model_part(self, prompts, replies) -> list[float]:
        scores = self.reward_model_scores(prompts, replies)
        if not self.normalize_reward_model:
            return scores
        if self.reward_model_scale is None:
            raise PipelineError("the reward model's scale is not set: standardising needs the warm-up rollouts first")
        mean, std = self.reward_model_scale
        clip = self.reward_model_clip or math.inf
        return [min(max((s - mean) / std, -clip), clip) for s in scores]


class PPORewardModel(torch.nn.Module):
    """The composite reward in the shape `trl.experimental.ppo.PPOTrainer` reads a reward model: it calls
    `getattr(model, model.base_model_prefix)(input_ids=..., attention_mask=...)` on prompt + reply (prompts padded on
    the left, replies on the right, padding replaced by id 0 and masked) and `model.score(hidden_states[-1])`, and
    takes the value at the reply's last token. The composite is per sequence, so every position gets it.

    PPOTrainer does not say where the prompt ends; the reply is what follows the last `<|end|><|assistant|>` pair, the
    end of every rendered prompt: a reply is cut at its first `<|end|>` (the stop token), so it cannot hold that pair.
    The end-of-turn part is left to PPOTrainer's own `missing_eos_penalty`, the same rule."""

    base_model_prefix = "composite"

    def __init__(self, composite: CompositeReward, end_token_id: int, assistant_token_id: int):
        super().__init__()
        self.composite = _CompositeBackbone(composite, end_token_id, assistant_token_id)
        # Registered as submodules so that PPOTrainer's `.to(device)` and dropout switch reach them.
        self.reward_model, self.reference_model = composite.reward_model, composite.reference_model

    def score(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class _CompositeBackbone(torch.nn.Module):
    def __init__(self, composite: CompositeReward, end_token_id: int, assistant_token_id: int):
        super().__init__()
        self.reward, self.prompt_end = composite, [end_token_id, assistant_token_id]

    def forward(self, input_ids, attention_mask, **_):
        prompts, replies = [], []
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            tokens = [t for t, real in zip(row, mask) if real]
            split = next((i + 2 for i in range(len(tokens) - 2, -1, -1) if tokens[i : i + 2] == self.prompt_end), None)
            if split is None:
                raise PipelineError("a PPO rollout has no `<|end|><|assistant|>` before its reply; prompts must be "
                                    "rendered with the chat template's generation prompt")
            prompts.append(tokens[:split])
            replies.append(tokens[split:])
        totals = self.reward(prompts, replies, skip=("end_of_turn",))
        values = torch.tensor(totals, dtype=torch.float32, device=input_ids.device)
        return BaseModelOutput(hidden_states=(values[:, None, None].expand(-1, input_ids.shape[1], 1),))


class _RLOOPart:
    """One part of the composite as an RLOOTrainer or GRPOTrainer reward function, logged as `rewards/<part>/mean`."""

    def __init__(self, composite: CompositeReward, name: str):
        self.composite, self.__name__ = composite, name

    def __call__(self, prompts: list[list[dict]], completion_ids: list[list[int]], **_) -> list[float]:
        tokenizer = self.composite.tokenizer
        prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=False) for p in prompts]
        return self.composite.part(self.__name__, prompt_ids, completion_ids)


def rloo_reward_funcs(composite: CompositeReward) -> tuple[list, list[float]]:
    """`reward_funcs` and `reward_weights` for `trl.RLOOTrainer` and `trl.GRPOTrainer`: one function per weighted part
    of the composite."""
    names = list(composite.weights)
    return [_RLOOPart(composite, name) for name in names], [composite.weights[name] for name in names]
