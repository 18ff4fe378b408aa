"""Muon for a transformer's hidden matrices with AdamW for the rest, as the one optimizer `transformers.Trainer` and
TRL's trainers take through their `optimizers=(optimizer, None)` hook: the Trainer's schedule then sets the learning
rate of every group and its checkpoints save both states.

Muon (torch.optim.Muon; Keller Jordan's, used by modded-nanogpt and nanochat) orthogonalises each 2-D update, which
suits the blocks' weight matrices; embeddings, the output head, norms and biases are not matrices in that sense and
keep AdamW. With `adjust_lr_fn="match_rms_adamw"` Muon's updates have AdamW's scale, so one learning rate and one
schedule serve both.

torch's Muon runs its Newton–Schulz iteration in bf16, which a CPU without bf16 instructions (AVX2 only, as most
laptops) emulates at a twentieth of its fp32 speed: there the optimizer step alone took longer than the forward and
backward passes. `Muon` below is the same algorithm with the iteration's precision as a parameter.
"""

import torch
from torch import nn
from torch.optim._muon import _adjust_lr

from minichatgpt.training.defaults import native_bf16


def orthogonalize(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton–Schulz iteration (Keller Jordan's coefficients), computed in `dtype`."""
    a, b, c = coefficients
    tall = update.size(0) > update.size(1)
    ortho = update.to(dtype)
    if tall:
        ortho = ortho.T
    ortho = ortho / ortho.norm().clamp(min=eps)
    for _ in range(steps):
        gram = ortho @ ortho.T
        ortho = torch.addmm(ortho, torch.addmm(gram, gram, gram, beta=b, alpha=c), ortho, beta=a)
    return ortho.T if tall else ortho


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton–Schulz iteration in `newton_schulz_dtype`: bf16 (torch's choice, bit for bit
    the same steps) where the machine computes in bf16 natively, fp32 elsewhere."""

    def __init__(self, params, newton_schulz_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(params, **kwargs)
        self.newton_schulz_dtype = newton_schulz_dtype or (torch.bfloat16 if native_bf16() else torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                buffer = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param.grad))
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.newton_schulz_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def hidden_matrices(model: nn.Module) -> list[str]:
    """Names of the 2-D weights inside the blocks: every 2-D parameter except those of embedding layers and of the
    output head (tied to the input embedding in GPT-2)."""
    excluded = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        excluded.add(id(head.weight))
    return [name for name, param in model.named_parameters()
            if param.requires_grad and param.ndim == 2 and id(param) not in excluded]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on `hidden_matrices(model)`, AdamW on the other trainable parameters (weight decay on 2-D ones only, as
    Trainer does: not on norms and biases)."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 momentum: float = 0.95):
        hidden = set(hidden_matrices(model))
        named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        matrices = [param for name, param in named if name in hidden]
        decayed = [param for name, param in named if name not in hidden and param.ndim >= 2]
        undecayed = [param for name, param in named if name not in hidden and param.ndim < 2]
        self.muon = Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                                        {"params": undecayed, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
        # The groups are the two optimizers' own dicts, so a learning rate set here is the one they step with.
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.muon.step(closure)
        self.adamw.step()
        return loss

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading gives both optimizers new group dicts (accelerate reloads every optimizer it prepares), which the
        # schedule must reach.
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]


def build_optimizer(name: str, model: nn.Module, training_args) -> torch.optim.Optimizer | None:
    """The optimizer a stage passes to its trainer: None for "adamw", which leaves the choice to the trainer's own
    `optim` setting."""
    if name == "adamw":
        return None
    return MuonWithAdamW(model, training_args.learning_rate, training_args.weight_decay,
                         betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon)
