"""What every stage script shares: the command line, error reporting, logging, loading models safely."""

import argparse
import logging
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.config import load_recipe  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

logger = logging.getLogger("minichatgpt")


def run_stage(main, description: str):
    """Parse `--config` (+ `--debug`), run `main(recipe, overrides)`, and turn failures into one line + exit code."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--config", required=True, help="recipe YAML file, e.g. recipes/smoke.yaml")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    known, overrides = parser.parse_known_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    use_cpu_cores()
    try:
        main(load_recipe(known.config), overrides)
    except PipelineError as err:
        if known.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; start the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - one line unless --debug, as for input errors
        if known.debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: {type(err).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


def use_cpu_cores():
    """Without an accelerator, give each process its share of the physical cores: `accelerate launch` pins a
    single CPU process to one thread (OMP_NUM_THREADS=1), which halves training speed on a 2-core machine."""
    import psutil
    import torch

    if not torch.accelerator.is_available():
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = int(os.environ.get("MINICHATGPT_CPU_THREADS", "0"))  # to run jobs side by side without oversubscribing
        torch.set_num_threads(threads or max(1, (psutil.cpu_count(logical=False) or 1) // processes))


def require_model_folder(path: str | os.PathLike, what: str) -> Path:
    """A model folder we may load: it exists and holds safetensors weights (pickle weights are refused)."""
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: {what} not found; run the stage that makes it first (or fix the path)")
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        if pickles:
            raise PipelineError(f"{folder}: only pickle weights ({', '.join(pickles)}); minichatgpt loads safetensors "
                                "only, convert with `model.save_pretrained(folder, safe_serialization=True)`")
        raise PipelineError(f"{folder}: {what} has no weights (*.safetensors)")
    return folder


def load_tokenizer(path: str | os.PathLike, what: str = "tokenizer"):
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: folder not found; run the stage that makes it first (or fix the path)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise PipelineError(f"{folder}: {what} not found; run `python tokenizer/train.py --config <recipe>` first")
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def load_model(path: str | os.PathLike, model_class, what: str, tokenizer=None, **kwargs):
    folder = require_model_folder(path, what)
    model = model_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=False, **kwargs)
    if tokenizer is not None:
        check_vocab(model, tokenizer, folder)
    return model


def check_vocab(model, tokenizer, folder):
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise PipelineError(
            f"{folder}: the model has {embeddings} token embeddings but the tokenizer has {len(tokenizer)} tokens; "
            "they come from different runs, use the tokenizer the model was trained with"
        )


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 50 else float("inf")


def trainer_defaults(**stage_defaults) -> dict:
    """Training settings that depend on the machine: bf16 on GPUs that have it, CPU mode without an accelerator,
    TensorBoard when installed."""
    import importlib.util

    import torch

    defaults = dict(stage_defaults)
    defaults.setdefault("bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    # Without an accelerator, Trainer only runs several processes as DDP (gloo) when told it is on the CPU.
    defaults.setdefault("use_cpu", not torch.accelerator.is_available())
    defaults.setdefault("ddp_find_unused_parameters", False)
    # Activation checkpointing off, under its current name. TRL's configs default to the deprecated alias
    # `gradient_checkpointing=True`, which made every SFT, reward and RL run print transformers' FutureWarning and
    # recompute each block's forward pass during backward: for models of a few million parameters (124M at most in
    # the shipped recipes) the saved activations are small, so checkpointing only costs time. A recipe that needs the
    # memory sets `activation_checkpointing: true` (or the old `gradient_checkpointing: true`; see Recipe.parse).
    defaults.setdefault("activation_checkpointing", False)
    if importlib.util.find_spec("tensorboard") is not None:
        defaults.setdefault("report_to", ["tensorboard"])
    return defaults


def plot_curves(log_history: list[dict], series: dict[str, str], path: Path, title: str) -> Path | None:
    """Plot logged values (`series` maps a log key to its label) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for key, label in series.items():
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def last_logged(log_history: list[dict], key: str, default: float | None = None) -> float | None:
    """The last value a trainer logged under `key`, or `default` when it logged none."""
    values = [row[key] for row in log_history if key in row]
    return values[-1] if values else default


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def metrics_table(metrics: dict) -> str:
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end a reply: the end-of-turn marker and end-of-text."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


# Maximum-mutual-information reranking (`chat.py --strategy mmi`): sampled candidates, and the weight of the reply's
# own likelihood subtracted from its likelihood given the conversation.
MMI_DEFAULTS = {"num_candidates": 8, "mmi_lambda": 0.5}


def chat_generation_config(tokenizer, max_new_tokens: int = 64):
    """Defaults shipped with every chat model: stop at the end of the turn, sample, never repeat a 3-gram.
    Not `repetition_penalty`: transformers applies it to the prompt's tokens too, so it steers replies away from the
    words of what was said (on the chat-hour SFT model it cut reply specificity from 0.48 to 0.32)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=end_of_turn_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=3,
        **MMI_DEFAULTS,
    )


def fit_history(tokenizer, messages: list[dict], max_tokens: int | None) -> tuple[list[int], int]:
    """Token ids of `messages` with the generation prompt, dropping the oldest turns until they fit in `max_tokens`
    (a leading system turn and the last turn are always kept); also returns how many turns were dropped."""
    messages = list(messages)
    keep_first = 1 if messages and messages[0]["role"] == "system" else 0
    dropped = 0
    while True:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        if max_tokens is None or len(ids) <= max_tokens:
            return ids, dropped
        if len(messages) - keep_first <= 1:
            return ids[-max_tokens:], dropped
        del messages[keep_first]
        dropped += 1


def render_prompts(tokenizer, conversations: list[list[dict]], max_prompt_tokens: int | None = None) -> list[list[int]]:
    return [fit_history(tokenizer, messages, max_prompt_tokens)[0] for messages in conversations]


def generate_replies(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16,
                     max_prompt_tokens: int | None = None, **generate_kwargs) -> list[str]:
    """Replies of a chat model to conversations ending at a user turn, via `generate()` with left padding. The
    chat's shipped `no_repeat_ngram_size` is off unless asked for: it would hide the loops these replies measure."""
    import torch

    generate_kwargs.setdefault("no_repeat_ngram_size", 0)
    prompts = render_prompts(tokenizer, conversations, max_prompt_tokens)
    replies = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                 **generate_kwargs)
        replies.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    return [r.strip() for r in replies]


def right_padded(rows: list[list[int]], pad_token_id: int, device):
    """Token rows as one right-padded batch on `device`: input ids, attention mask, and each row's length."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows], device=device)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    attention = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return input_ids, attention, lengths


def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """Reward-model scores of whole conversations (ending with the reply to judge), rendered with the chat template;
    the score is read at the last token, the reply's end-of-turn marker, as TRL's trainers do."""
    return score_sequences(model, [tokenizer.apply_chat_template(c, return_dict=False) for c in conversations],
                           tokenizer.pad_token_id, batch_size)


def score_sequences(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """Reward-model scores of token sequences, read at each sequence's last token; a sequence too long for the
    context window loses its oldest tokens."""
    import torch

    window = model.config.max_position_embeddings
    scores = []
    model.eval()
    for start in range(0, len(sequences), batch_size):
        rows = [ids[-window:] for ids in sequences[start : start + batch_size]]
        input_ids, attention, lengths = right_padded(rows, pad_token_id, model.device)
        with torch.no_grad():
            # Read the score at each row's last real token ourselves: the padding token may also occur in a reply.
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            logits = model.score(hidden[torch.arange(len(rows), device=model.device), lengths - 1])
        scores.extend(logits[:, 0].float().cpu().tolist())
    return scores


# The prompt that conditions on nothing: p(reply | empty prompt) is the reply's prior under a chat model, the
# "anti-language model" of maximum-mutual-information decoding.
EMPTY_PROMPT = [{"role": "user", "content": ""}]


def reply_token_ids(tokenizer, reply: str) -> list[int]:
    """Token ids of a reply as the chat template writes it after the generation prompt, end-of-turn included."""
    return tokenizer(f"{reply}<|end|>", add_special_tokens=False)["input_ids"]


def reply_log_likelihoods(model, prompts: list[list[int]], replies: list[list[int]], batch_size: int = 32
                          ) -> list[float]:
    """Sum of log p(reply tokens | prompt tokens) under a causal LM for each (prompt, reply) pair; a prompt too long
    for the context window loses its oldest tokens. Pairs are batched by length, so that little is padding."""
    import torch

    window = model.config.max_position_embeddings
    pad = model.config.pad_token_id or 0
    rows = []
    for prompt, reply in zip(prompts, replies):
        reply = reply[: window - 1]
        rows.append((prompt[-(window - len(reply)):] if len(prompt) + len(reply) > window else prompt, reply))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    totals = [0.0] * len(rows)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        input_ids, attention, lengths = right_padded([p + r for p, r in batch], pad, model.device)
        # Token t is predicted at position t-1; a reply with no prompt token before it loses its first token.
        first = torch.tensor([max(len(p), 1) for p, _ in batch], device=model.device)
        positions = torch.arange(1, input_ids.shape[1], device=model.device)[None, :]
        scored = (positions >= first[:, None]) & (positions < lengths[:, None])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        for i, total in zip(order[start : start + batch_size], (token_log_probs * scored).sum(-1).cpu().tolist()):
            totals[i] = total
    return totals


def pmi_scores(model, tokenizer, prompts: list[list[int]], replies: list[str], mmi_lambda: float = 1.0,
               batch_size: int = 32) -> list[float]:
    """Per-token log p(reply | prompt) - mmi_lambda * log p(reply | empty prompt) for rendered prompts (token ids
    ending with the generation prompt): how much the prompt explains the reply beyond the reply's own likelihood
    (pointwise mutual information at mmi_lambda = 1)."""
    reply_ids = [reply_token_ids(tokenizer, r) for r in replies]
    return token_pmi_scores(model, tokenizer, prompts, reply_ids, mmi_lambda, batch_size)


def token_pmi_scores(model, tokenizer, prompts: list[list[int]], replies: list[list[int]], mmi_lambda: float = 1.0,
                     batch_size: int = 32) -> list[float]:
    """`pmi_scores` on the replies' token ids."""
    conditional = reply_log_likelihoods(model, prompts, replies, batch_size)
    if not mmi_lambda:
        return [c / max(len(ids), 1) for c, ids in zip(conditional, replies)]
    empty = tokenizer.apply_chat_template(EMPTY_PROMPT, add_generation_prompt=True, return_dict=False)
    prior = reply_log_likelihoods(model, [empty] * len(replies), replies, batch_size)
    return [(c - mmi_lambda * u) / max(len(ids), 1) for c, u, ids in zip(conditional, prior, replies)]


def fit_context(recipe, section: str, max_length: int | None, context: int) -> int:
    """The sequence length to train with: the model's context unless the recipe asks for less; asking for more than
    the model has positions for is an error."""
    asked = (recipe.sections.get(section) or {}).get("max_length")
    if asked is not None and asked > context:
        raise PipelineError(f"{recipe.path}: {section}.max_length={asked} is above the model's {context} positions "
                            f"(model.n_positions); use at most {context}")
    return context if max_length is None or max_length > context else max_length
