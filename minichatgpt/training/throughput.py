"""Training speed: FLOPs per token, a device's peak, and tokens/s (and MFU) in every log line."""

import time

import torch
from transformers import (
    TrainerCallback,
)

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs per token: 6·N for the weights plus 12·L·d·T for attention (PaLM appendix B)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


def device_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


class ThroughputCallback(TrainerCallback):
    """Adds tokens/s (all processes) and, on a known GPU, MFU to every log line; eval time is not counted."""

    def __init__(self, tokens_per_step: int, flops_per_token: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = device_peak_flops()

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark_time, self.mark_step, self.eval_seconds = time.time(), state.global_step, 0.0
        self.train_seconds, self.trained_steps = 0.0, 0

    def on_prediction_step(self, args, state, control, **kwargs):
        self.eval_started = getattr(self, "eval_started", None) or time.time()

    def on_evaluate(self, args, state, control, **kwargs):
        if getattr(self, "eval_started", None):
            self.eval_seconds += time.time() - self.eval_started
            self.eval_started = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        seconds = time.time() - self.mark_time - self.eval_seconds
        steps = state.global_step - self.mark_step
        if steps <= 0 or seconds <= 0:
            return
        self.train_seconds += seconds
        self.trained_steps += steps
        tokens_per_second = steps * self.tokens_per_step / seconds
        logs["tokens_per_second"] = round(tokens_per_second, 1)
        if self.peak:
            logs["mfu"] = round(tokens_per_second * self.flops_per_token / (self.peak * args.world_size), 4)
        self.mark_time, self.mark_step, self.eval_seconds = time.time(), state.global_step, 0.0

    def summary(self) -> dict:
        if not self.train_seconds:
            return {}
        rate = self.trained_steps * self.tokens_per_step / self.train_seconds
        out = {"tokens_per_second": round(rate, 1)}
        if self.peak:
            out["mfu"] = round(rate * self.flops_per_token / self.peak, 4)
        return out
