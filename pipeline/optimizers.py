"""Muon for a transformer's hidden matrices with AdamW for the rest, as the one optimizer `transformers.Trainer` and
TRL's trainers take through their `optimizers=(optimizer, None)` hook: the Trainer's schedule then sets the learning
rate of every group and its checkpoints save both states.

Muon (torch.optim.Muon; Keller Jordan's, used by modded-nanogpt and nanochat) orthogonalises each 2-D update, which
suits the blocks' weight matrices; embeddings, the output head, norms and biases are not matrices in that sense and
keep AdamW. With `adjust_lr_fn="match_rms_adamw"` Muon's updates have AdamW's scale, so one learning rate and one
schedule serve both.
"""

import torch
from torch import nn


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
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                                        {"params": undecayed, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
        # The groups are the two optimizers' own dicts, so a learning rate set here is the one they step with.
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.muon.step()
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
