"""Training settings that depend on the machine (precision, CPU or accelerator) or on the model (context length)."""

from minichatgpt.data.chat_format import END_OF_TURN
from minichatgpt.errors import PipelineError


def native_bf16() -> bool:
    """Whether this machine computes in bf16 natively: a CUDA GPU that supports it, or, without an accelerator, a CPU
    with bf16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16), which oneDNN runs matmuls on at 2-3x the fp32 rate.
    Elsewhere bf16 autocast is emulated and slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if torch.accelerator.is_available():
        return False
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def precision_label(training_args) -> str:
    """How a stage computed, for its model card; the weights it trains and pushes are fp32 whichever it is."""
    if training_args.bf16:
        return "bf16 autocast"
    return "fp16 autocast" if training_args.fp16 else "fp32"


def trainer_defaults(**stage_defaults) -> dict:
    """Training settings that depend on the machine: bf16 autocast where it is native (GPU or CPU), CPU mode without
    an accelerator, TensorBoard when installed."""
    import importlib.util

    import torch

    defaults = dict(stage_defaults)
    defaults.setdefault("bf16", native_bf16())
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


def fit_context(recipe, section: str, max_length: int | None, context: int) -> int:
    """The sequence length to train with: the model's context unless the recipe asks for less; asking for more than
    the model has positions for is an error."""
    asked = (recipe.sections.get(section) or {}).get("max_length")
    if asked is not None and asked > context:
        raise PipelineError(f"{recipe.path}: {section}.max_length={asked} is above the model's {context} positions "
                            f"(model.n_positions); use at most {context}")
    return context if max_length is None or max_length > context else max_length


def trainer_speed_defaults(cuda: bool) -> dict:
    """TrainingArguments defaults that keep the GPU from waiting for the host every step: no NaN/Inf check of the
    step's loss (a device-to-host sync; a NaN now shows in the logged loss instead of being averaged away), and on
    CUDA, batches made by two persistent workers in pinned memory and copied without blocking. On a CPU, extra
    workers would only take cores from training."""
    defaults = {"logging_nan_inf_filter": False, "dataloader_pin_memory": cuda}
    if cuda:
        defaults.update(dataloader_num_workers=2, dataloader_persistent_workers=True,
                        accelerator_config={"non_blocking": True})
    return defaults


def pretrain_defaults() -> dict:
    """The pretraining stage's TrainingArguments defaults, before the recipe's section and the command line."""
    import torch

    return trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_total_limit=2, eval_strategy="steps",
                            logging_steps=10, **trainer_speed_defaults(torch.cuda.is_available()))


def sft_defaults() -> dict:
    """The SFT stage's SFTConfig defaults: the loss on assistant tokens, a turn ending at <|end|>, and windows of
    similar length batched together (random batches are mostly padding: docs/results.md, "Benchmarks")."""
    return trainer_defaults(assistant_only_loss=True, eos_token=END_OF_TURN, lr_scheduler_type="cosine",
                            warmup_steps=0.05, save_total_limit=2, eval_strategy="no", logging_steps=10,
                            train_sampling_strategy="group_by_length")


def reward_defaults() -> dict:
    """The reward stage's RewardConfig defaults: pairs of similar length batched together, and the `margin` column
    kept for the loss."""
    return trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_total_limit=2, eval_strategy="no",
                            logging_steps=10, train_sampling_strategy="group_by_length", remove_unused_columns=False)


def dpo_defaults() -> dict:
    """The DPO stage's DPOConfig defaults: no checkpoints (the stage is minutes long), logs every 10 steps."""
    return trainer_defaults(lr_scheduler_type="cosine", warmup_steps=0.05, save_strategy="no", eval_strategy="no",
                            logging_steps=10, learning_rate=1e-5)


def ppo_defaults() -> dict:
    """The RL stage's PPOConfig defaults: replies end at the end of turn (a reply without one is penalised), no
    samples logged during training, no checkpoints (the stage is minutes long), a log line every step."""
    return trainer_defaults(stop_token="eos", missing_eos_penalty=1.0, num_sample_generations=0, learning_rate=1e-5,
                            kl_coef=0.05, temperature=1.0, response_length=32, save_strategy="no", logging_steps=1)
